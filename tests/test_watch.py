"""``p2w index DIR --watch``: a real watcher process and a real server; the folder changed while the test runs."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from p2w.library.watch import folders_of
from serving import Running, backbone_args, make_photos, running_server

WAIT = 60.0  # seconds a change may take to show on 2 busy cores (measured: about 1-2 s, see the printed delays)


def test_the_folders_an_event_touches(tmp_path):
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    roots = [str(root)]
    paths = [str(root / "a" / "b" / "new.jpg"), str(root / "a" / "gone" / "x.jpg"), str(root / "a" / "b"), "/elsewhere"]
    assert folders_of(paths, roots) == [str(root / "a")]  # a deleted folder: its parent; nested ones: the outer
    assert folders_of([str(root / "a" / "b" / "c.jpg")], roots) == [str(root / "a" / "b")]
    shutil.rmtree(root)
    assert folders_of([str(root / "a" / "b" / "c.jpg")], roots) == [str(root)]  # the root itself, gone or not


class Lines:
    """A process's stdout lines, read on a thread (a test never blocks on a pipe)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def next_json(self, timeout: float = WAIT) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith("{"):
                return dict(json.loads(line))


def found(server: Running, name: str) -> bool:
    status, answer = server.json("/api/search", {"text": "a photo", "k": 200})
    return status == 200 and any(Path(h["path"]).name == name for h in answer["results"])


def until(condition: Any, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < WAIT, f"not within {WAIT} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_watched_folder_is_searchable_through_a_running_server_within_seconds(tiny, tmp_path):
    home, photos = tmp_path / "home", tmp_path / "photos"
    make_photos(photos / "2024", 4)
    extra = make_photos(tmp_path / "elsewhere", 3, seed=7)
    bb = backbone_args(tiny)
    env = {**os.environ, "P2W_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "p2w", "index", str(photos), *bb, "--workers", "0", "--watch", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        lines = Lines(watcher.stdout)
        assert lines.next_json()["added"] == 4  # the first, full run
        with running_server(home, [*bb, "--mapper", str(tiny.mapper)]) as server:
            shutil.copy(extra[0], photos / "2024" / "copied in.jpg")
            delay = until(lambda: found(server, "copied in.jpg"), "a copied photo found through the server")
            print(f"a copied photo was found through the server {delay:.2f} s after it was copied")
            assert lines.next_json()["added"] == 1
            (photos / "2025").mkdir()
            shutil.copy(extra[1], photos / "2025" / "new folder.jpg")
            until(lambda: found(server, "new folder.jpg"), "a photo in a new folder")
            lines.next_json()
            (photos / "2024" / "photo 000.jpg").unlink()
            until(lambda: not found(server, "photo 000.jpg"), "a deleted photo gone")
            assert lines.next_json()["removed"] == 1
            os.rename(photos / "2024", photos / "renamed")
            until(lambda: found(server, "photo 001.jpg") and "renamed" in _path(server, "photo 001.jpg"), "a move")
            moved = lines.next_json()
            assert (moved["moved"], moved["added"], moved["removed"]) == (4, 0, 0), moved  # no photo embedded again
        os.rename(photos, tmp_path / "unmounted")  # the whole root goes away, as an unmounted drive does
        time.sleep(3)  # a batch or two
        status = subprocess.run([sys.executable, "-m", "p2w", "status", "--json"], env=env, capture_output=True)
        assert json.loads(status.stdout)[0]["files"] == 5, status.stderr  # its photos are kept
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=WAIT)
        assert watcher.stderr is not None
        errors = watcher.stderr.read()
        assert watcher.returncode == 0, errors
        assert "stopped watching" in errors and "Traceback" not in errors
        assert f"{photos} is gone; its photos are kept" in errors
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        for pipe in (watcher.stdout, watcher.stderr):
            if pipe is not None:
                pipe.close()


def _path(server: Running, name: str) -> str:
    _, answer = server.json("/api/search", {"text": "a photo", "k": 200})
    return next(h["path"] for h in answer["results"] if Path(h["path"]).name == name)
