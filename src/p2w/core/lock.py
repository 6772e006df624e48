"""The writer lock of a folder (a catalog, a layout being indexed): one process at a time changes it, and the lock is
that process's alone.

On POSIX it is a record lock (``fcntl.lockf``): it belongs to the process that took it, so the DataLoader workers
forked while it is held never hold it, and a ``kill -9`` or an OOM kill frees it at once. A process drops its
record locks when it closes *any* descriptor of the file, so the file is opened once per acquisition and a second
acquisition in the same process is refused without opening it again. On Windows ``msvcrt.locking`` locks a byte
of the handle, which child processes do not inherit either.

The file records the holder's pid; a refusal names it only while that process is alive.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from p2w.errors import P2WError

LOCK_NAME = "lock"
_LOCKED_BYTE = 1 << 20  # past the pid record: Windows locks are mandatory, and a refused process reads the record
_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
_held: dict[str, int] = {}  # lock files held by this process -> its pid (a forked child inherits a copy)
_guard = threading.Lock()

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _LOCKED_BYTE)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _LOCKED_BYTE)


class WriterLock:
    """A held writer lock; ``discard()`` removes its file and the catalog folder (when empty) on release."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self.fd = folder, fd
        self.discarded: tuple[Path, ...] | None = None

    def discard(self, *also: Path) -> None:
        """On release, remove the lock file, then the folder and the folders ``also``, each if it is empty."""
        self.discarded = also

    def release(self) -> None:
        """Clear the pid record, unlock, close (and remove, after ``discard()``)."""
        path = self.folder / LOCK_NAME
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        if self.discarded is not None and os.name == "posix":  # unlinked while held: see _is_current
            with contextlib.suppress(OSError):
                path.unlink()
        try:
            _unlock(self.fd)
        finally:
            os.close(self.fd)
        if self.discarded is not None:
            with contextlib.suppress(OSError):
                if os.name != "posix":
                    path.unlink()  # fails while another process has it open: then it stays
                for empty in (self.folder, *self.discarded):
                    empty.rmdir()


@contextlib.contextmanager
def writer_lock(folder: Path, what: str = "the catalog") -> Iterator[WriterLock]:
    """Exclusive lock for changing ``what`` in ``folder``; a second writer fails at once with a clear message."""
    key = os.path.normcase(os.path.abspath(folder / LOCK_NAME))
    with _guard:
        if _held.get(key) == os.getpid():
            raise P2WError(
                f"another p2w task in this process (pid {os.getpid()}) is updating {what} in {folder}; "
                "wait for it to finish"
            )
        lock = WriterLock(folder, _acquire(folder, what))
        _held[key] = os.getpid()
    try:
        yield lock
    finally:
        with _guard:
            _held.pop(key, None)
            lock.release()


def _acquire(folder: Path, what: str) -> int:
    """The locked descriptor of ``folder/lock``, its pid record written; P2WError when another process holds it."""
    path = folder / LOCK_NAME
    for _ in range(10):
        fd = _open(path)
        if fd is None:
            continue  # removed by a run that discarded an empty catalog: make it again
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            raise P2WError(f"cannot lock {path} ({exc.strerror}); keep P2W_HOME on a local disk") from exc
        if not locked:
            holder = _holder(fd)
            os.close(fd)
            named = f" (pid {holder})" if holder else ""
            raise P2WError(f"another p2w process{named} is updating {what} in {folder}; wait for it to finish")
        if _is_current(fd, path):
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        _unlock(fd)  # locked a file its last holder had just removed: the next process would lock a new one
        os.close(fd)
    raise P2WError(f"cannot lock {path}: it keeps being removed; is another program cleaning {folder.parent}?")


def _open(path: Path) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _FLAGS, 0o644)
    except FileNotFoundError:  # the folder was removed between mkdir and open
        return None
    except OSError as exc:
        raise P2WError(f"cannot open {path} ({exc.strerror}); check that P2W_HOME is writable") from exc


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one unlinked by the holder before us)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int, wait: float = 0.25) -> int | None:
    """The live process recorded in the lock file; a new holder may take a moment to write its pid."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            pid = int(os.read(fd, 32).decode("ascii", "replace").strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and pid_alive(pid):
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, already stopped, is not)."""
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        try:
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) is the answer
