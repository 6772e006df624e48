"""The catalog's writer lock: held by one process (never by its children), a refusal names a live holder, and the
module imports where ``fcntl`` does not exist (Windows)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from p2w.core.lock import writer_lock
from p2w.errors import P2WError

posix_only = pytest.mark.skipif(os.name != "posix", reason="forks and signals")

# Takes the lock, optionally forks a child that outlives it (as DataLoader workers do), says so, then sleeps.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from p2w.core.lock import writer_lock
    with writer_lock(Path(sys.argv[1])):
        child = os.fork() if sys.argv[2] == "fork" else -1
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a process holding the lock of ``tmp_path / "cat"``: returns (process, pid of its forked child or -1)."""
    procs: list[tuple[subprocess.Popen[str], int]] = []

    def start(fork: bool = False) -> tuple[subprocess.Popen[str], int]:
        cmd = [sys.executable, "-c", HOLDER, str(tmp_path / "cat"), "fork" if fork else "-"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        procs.append((proc, int(proc.stdout.readline())))
        return procs[-1]

    yield start
    for proc, child in procs:
        for pid in (proc.pid, child):
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@posix_only
def test_a_refusal_names_the_live_holder(tmp_path, holder):
    proc, _ = holder()
    refusal = rf"another p2w process \(pid {proc.pid}\) is updating the catalog"
    with pytest.raises(P2WError, match=refusal), writer_lock(tmp_path / "cat"):
        pass


@posix_only
def test_a_stale_record_is_not_named_as_a_running_process(tmp_path, holder):
    holder()
    stale = dead_pid()
    (tmp_path / "cat" / "lock").write_text(str(stale))  # another process's record, not the holder's
    with pytest.raises(P2WError, match="another p2w process") as info, writer_lock(tmp_path / "cat"):
        pass
    assert str(stale) not in str(info.value)


def probe(folder: Path) -> subprocess.CompletedProcess[str]:
    """Try the lock from another process (reading the lock file here would drop this process's lock)."""
    code = f"import pathlib, p2w.core.lock as m\nwith m.writer_lock(pathlib.Path({str(folder)!r})): pass"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


@posix_only
def test_children_forked_under_the_lock_do_not_hold_it(tmp_path, holder):
    proc, child = holder(fork=True)
    proc.kill()  # kill -9: the forked child lives on, with a copy of the locked descriptor
    proc.wait()
    os.kill(child, 0)  # still alive
    with writer_lock(tmp_path / "cat"):
        refused = probe(tmp_path / "cat")
        assert refused.returncode == 1 and f"(pid {os.getpid()})" in refused.stderr


@posix_only
def test_a_nested_lock_is_refused_and_keeps_the_outer_one(tmp_path):
    folder = tmp_path / "cat"
    with writer_lock(folder):
        with pytest.raises(P2WError, match="another p2w task in this process"), writer_lock(folder):
            pass
        refused = probe(folder)
        assert refused.returncode == 1 and f"(pid {os.getpid()})" in refused.stderr  # still held by this process
    assert probe(folder).returncode == 0, probe(folder).stderr  # released


# Where `import fcntl` fails and msvcrt exists, as on Windows: the catalog imports, and the lock uses msvcrt.locking.
WINDOWS = textwrap.dedent(
    """
    import sys, types
    from pathlib import Path
    import p2w.errors, p2w.settings, p2w.spec  # their own imports, on the real platform
    calls = []
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_NBLCK, msvcrt.LK_UNLCK = 2, 0
    msvcrt.locking = lambda fd, mode, n: calls.append((mode, n))
    sys.modules["msvcrt"], sys.modules["fcntl"] = msvcrt, None
    sys.platform = "win32"
    import p2w.library.catalog
    from p2w.core.lock import writer_lock
    with writer_lock(Path(sys.argv[1])):
        pass
    assert calls == [(2, 1), (0, 1)], calls
    """
)


def test_the_lock_imports_and_works_without_fcntl(tmp_path):
    done = subprocess.run([sys.executable, "-c", WINDOWS, str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
