"""Run ``p2w serve``: bind the socket (``port=0``: a free one), publish the discovery record, serve until Ctrl-C or
SIGTERM, then remove the record. The URL with its token (and the engine loaded) are handed to ``on_ready`` before
the first request."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.serve import discovery
from p2w.serve.http import create_app
from p2w.serve.query import GalleryChoice
from p2w.serve.requests import Limits
from p2w.serve.service import start
from p2w.settings import Settings
from p2w.version import version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Address:
    """Where the server listens and the URL to open (with its token)."""

    host: str
    port: int
    token: str

    @property
    def base(self) -> str:
        """``http://HOST:PORT`` (IPv6 hosts in brackets; a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        return f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{self.port}"

    @property
    def url(self) -> str:
        """The address to open: ``http://127.0.0.1:PORT/?token=...``."""
        return f"{self.base}/?token={self.token}"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free port); a one-line error when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; pass --port 0 for a free one" if port else ""
        raise P2WError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.set_inheritable(False)
    return sock


def serve(
    load: Callable[[], Engine],
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[Address, Engine], None] | None = None,
    limits: Limits | None = None,
    gallery: GalleryChoice | None = None,
) -> None:
    """Serve the engine ``load()`` returns (e.g. ``lambda: p2w.load(mapper="default")``) over HTTP until
    interrupted; blocks. The port is bound first (a port in use fails before the model loads); ``load`` then runs on
    the thread that will run every query (``p2w.serve.service.start`` says why). ``gallery``: what it searches (the
    catalog when not given). A server of the catalog publishes a record in ``P2W_HOME/servers`` exactly while it
    answers (warm ``p2w search`` finds it there); a server of an index or a back end publishes none."""
    import uvicorn

    sock = bind(host, port)
    try:
        service, worker = start(load, settings, limits, gallery)
    except BaseException:
        sock.close()
        raise
    engine = service.engine
    address = Address(host, sock.getsockname()[1], secrets.token_urlsafe(24))
    app = create_app(service, address.token, host, address.port, worker)
    mapper = str(engine.mapper_file.path.resolve()) if engine.mapper_file else None
    pid, published = os.getpid(), dataclasses.asdict(service.limits)
    record = discovery.ServerRecord(address.base, address.token, pid, service.backbone, mapper, version(), published)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    published_record = service.choice.catalog
    if published_record:
        discovery.write(settings, record)
    try:
        if on_ready is not None:
            on_ready(address, engine)
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the Ctrl-C it caught: done
        log.debug("p2w serve stopped by Ctrl-C")
    finally:
        if published_record:
            discovery.remove(settings, record)
        with contextlib.suppress(OSError):
            sock.close()
