"""Helpers for tests of ``p2w serve``: a real server process (``python -m p2w serve``, uvicorn on 127.0.0.1 with a
free port) over a small catalog, and a plain-urllib client that can send anything (hostile requests included); and
``loopback``, any request handler served on 127.0.0.1 for a block (a file host, a fake back end)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Running:
    """A server process and how to reach it."""

    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    token: str
    home: Path

    def request(
        self,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
        method: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` of one request; nothing is added but the bearer token (when ``token``)."""
        all_headers = {**({"Authorization": f"Bearer {self.token}"} if token else {}), **(headers or {})}
        request = urllib.request.Request(self.url + path, data=body, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, payload: Any | None = None, **kw: Any) -> tuple[int, Any]:
        """A JSON request (POST when ``payload`` is given) and its decoded answer."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, _, data = self.request(path, body, headers, **kw)
        return status, json.loads(data) if data else None


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small distinct JPEGs (noise over a colour) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.integers(-40, 40, (40 + i % 7, 48, 3)), 0, 255).astype(np.uint8)
        path = folder / f"photo {i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=92)
        out.append(path)
    return out


def backbone_args(tiny: Any) -> list[str]:
    """The tiny test model's options."""
    return ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]


@contextlib.contextmanager
def running_server(home: Path, args: list[str], timeout: float = 120.0) -> Iterator[Running]:
    """``p2w serve ARGS --port 0`` with ``P2W_HOME=home``, ready to answer; stopped with Ctrl-C (SIGINT) at the end,
    and required to exit cleanly (status 0) and to remove its discovery record."""
    env = {**os.environ, "P2W_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2w", "serve", "--port", "0", "--device", "cpu", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if not first.startswith("http://127.0.0.1:"):
            proc.kill()
            raise AssertionError(f"p2w serve did not start: {first!r} {proc.communicate()[1]}")
        base, token = first.split("/?token=")
        running = Running(proc, base, token, home)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if running.request("/api/status")[0] == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("p2w serve did not answer")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    errors = proc.stderr.read() if proc.stderr else ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    assert proc.returncode == 0, errors
    assert not list((home / "servers").glob("*.json")), "the discovery record outlived the server"


@contextlib.contextmanager
def loopback(handler: type[BaseHTTPRequestHandler] | Any) -> Iterator[str]:
    """``handler`` (a request handler class, or a factory of one's instances) served on 127.0.0.1, a free port, by a
    thread for the duration of the block: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
