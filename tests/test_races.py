"""Races between real processes on one catalog: schema migration by several openers at once, an index built while
another process commits, and a busy server that is slow to answer (not dead: its record stays)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p2w.core.dates import from_mtime
from p2w.library import ann as ann_mod
from p2w.library.catalog import SCHEMA_VERSION, Catalog

DIM = 32


def _schema_1_catalog(folder: Path, rows: int) -> None:
    """A catalog as p2w wrote it before the features' norm was kept (schema 1): its opening must migrate."""
    folder.mkdir(parents=True)
    con = sqlite3.connect(folder / "catalog.sqlite")
    con.execute("PRAGMA journal_mode=WAL")  # as p2w made every catalog
    con.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE files (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER,"
        " mtime_ns INTEGER, hash TEXT NOT NULL, vec BLOB NOT NULL, added REAL);"
        "CREATE INDEX files_hash ON files (hash);"
        "CREATE TABLE skipped (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);"
        f"INSERT INTO meta VALUES ('schema', '1'), ('backbone', 'b/x'), ('dim', '{DIM}'), ('generation', '1');"
    )
    vec = np.zeros(DIM, dtype=np.float32)
    vec[0] = 1
    con.executemany(
        "INSERT INTO files (path, size, mtime_ns, hash, vec) VALUES (?, 1, 1, ?, ?)",
        [(f"/photos/{i}.jpg", f"{i:064x}", vec.tobytes()) for i in range(rows)],
    )
    con.commit()
    con.close()


OPEN_AT = """
import sys, time
from pathlib import Path
from p2w.library.catalog import Catalog
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
Catalog(Path(sys.argv[1]), "b/x").close()
"""


def test_processes_opening_an_old_catalog_at_once_migrate_it_once(tmp_path):
    """Migration ran on every open without the writer lock: two processes opening at once after an upgrade failed
    with `duplicate column name`."""
    for attempt in range(3):
        folder = tmp_path / f"catalog{attempt}"
        _schema_1_catalog(folder, 200)
        start = time.time() + 3.0  # every process waits for the same instant, then opens
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT, str(folder), repr(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(8)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(e for e in errors if e)
        catalog = Catalog(folder, "b/x")
        assert int(catalog.meta()["schema"]) == SCHEMA_VERSION and catalog.count() == 200
        assert len(catalog.rows_under(["/photos"])) == 200
        catalog.close()


WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from p2w.core.dates import from_mtime
from p2w.library.catalog import Catalog
catalog = Catalog(Path(sys.argv[1]), "b/x")
rng = np.random.default_rng(1)
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:  # one row, one generation, at a time
    v = rng.standard_normal(int(sys.argv[3])).astype(np.float32)
    v /= np.linalg.norm(v)
    catalog.put([(f"/new/{i}.jpg", 1, 1, f"new{i}", v.tobytes(), 1.0, from_mtime(1))], len(v))
    i += 1
catalog.close()
print(i)
"""


def test_an_index_built_while_another_process_commits_is_one_state(tmp_path):
    """`ann.build` read the row count, the vectors and the generation at three moments: hnswlib's "exceeds the
    specified limit", or an index labelled with a generation it lacks rows of (a server never reloads it)."""
    folder = tmp_path / "catalog"
    catalog = Catalog(folder, "b/x", DIM, create=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4_000, DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    catalog.put([(f"/p/{i}.jpg", 1, 1, f"{i:064x}", v.tobytes(), 1.0, from_mtime(1)) for i, v in enumerate(base)], DIM)
    g0, n0 = catalog.generation, catalog.count()
    command = [sys.executable, "-c", WRITER, str(folder), "8", str(DIM)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        builds = 0
        while writer.poll() is None:
            ann = ann_mod.build(catalog)
            assert ann.live == ann.index.element_count == n0 + (ann.generation - g0)
            builds += 1
    finally:
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and int(out) > 0 and builds > 1
    catalog.close()


def _silent_server() -> tuple[int, Callable[[], None]]:
    """A server that accepts connections and never answers (one busy with a long request): its port, and a
    function that stops it (nothing listens on the port afterwards)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()

    return server.getsockname()[1], stop


def test_a_busy_server_is_not_forgotten(tmp_path, monkeypatch):
    """A read timeout deleted the discovery record of a live server: every later `p2w search` went cold."""
    import os

    from p2w.serve import discovery
    from p2w.serve.client import warm_search
    from p2w.settings import Settings

    settings = Settings(home=tmp_path / "home")
    port, stop = _silent_server()
    limits = {"upload_bytes": 1 << 20, "upload_pixels": 10**6, "k": 200, "ef": 10_000, "uploads_kept": 8, "images": 8}
    record = discovery.ServerRecord(f"http://127.0.0.1:{port}", "t", os.getpid(), "b/x", None, "0", limits)
    path = discovery.write(settings, record)
    try:
        assert warm_search(settings, "b/x", None, {"text": "a photo", "k": 3}, timeout=0.5) is None  # searched cold
        assert discovery.read(path) == record  # a live server that was slow keeps its record
    finally:
        stop()
    assert warm_search(settings, "b/x", None, {"text": "a photo", "k": 3}, timeout=5) is None
    assert not path.exists()  # nothing listens there any more: that one is dead, its record goes
