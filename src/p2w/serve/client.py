"""The warm ``p2w search``'s client: one composed query sent to a running ``p2w serve`` on loopback. Stdlib only."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2w.errors import P2WError
from p2w.library.catalog import Hit
from p2w.serve import discovery
from p2w.serve.discovery import ServerRecord
from p2w.settings import Settings

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The server did not answer: the caller falls back to an in-process search. ``dead``: nothing listens at its
    address any more (the connection was refused), so its record can go; a timeout is a busy server, not a dead one."""

    def __init__(self, message: str, dead: bool = False) -> None:
        super().__init__(message)
        self.dead = dead


class Refused(P2WError):
    """The server answered with an error (``status``, and its one-line message)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


TIMEOUT = 60.0  # seconds a busy server is given to answer one request


def call(record: ServerRecord, path: str, body: bytes, content_type: str, timeout: float = TIMEOUT) -> Any:
    """POST ``body`` to ``record.url + path`` with the token; the JSON answer, or ``P2WError`` with the server's
    one-line error, or ``Unreachable``."""
    request = urllib.request.Request(
        record.url + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {record.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error")
        except (ValueError, AttributeError):
            message = None
        if message:
            raise Refused(message, exc.code) from exc
        raise Unreachable(f"HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise Unreachable(str(exc.reason), dead=isinstance(exc.reason, ConnectionRefusedError)) from exc
    except (OSError, ValueError) as exc:  # a timeout while reading the answer, a connection reset, bad JSON
        raise Unreachable(str(exc) or type(exc).__name__, dead=isinstance(exc, ConnectionRefusedError)) from exc


def search(
    record: ServerRecord, query: dict[str, Any], images: Sequence[bytes] = (), timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """The hits (``{"rank", "score", "path", "size", "mtime", "id"}``) of ``query`` (the fields of
    ``p2w.serve.requests.Query``), the images' bytes uploaded first (in order: the i-th ``*`` takes the i-th)."""
    if images:
        uploads = [call(record, "/api/upload", data, "application/octet-stream", timeout)["upload"] for data in images]
        query = {**query, "images": [{"upload": u} for u in uploads]}
    answer = call(record, "/api/search", json.dumps(query).encode(), "application/json", timeout)
    return list(answer["results"])


def warm_search(
    settings: Settings,
    backbone: str,
    mapper: Path | None,
    query: dict[str, Any],
    images: Sequence[Path] = (),
    timeout: float = TIMEOUT,
) -> list[Hit] | None:
    """``query`` answered by the running ``p2w serve`` of ``backbone`` — the hits an in-process search would give —
    or None when there is no such server, it holds another mapper than ``mapper`` (a resolved file, for pic2word
    queries), the query is beyond what it takes (its limits), or it does not answer in ``timeout`` seconds. Only a
    server found dead (its process gone, or nothing listening at its address) has its record removed."""
    record = discovery.find(settings, backbone)
    if record is None:
        return None
    if mapper is not None and (record.mapper is None or Path(record.mapper) != mapper.resolve()):
        log.debug("the server at %s holds mapper %s, not %s", record.url, record.mapper, mapper)
        return None
    beyond = _beyond(record.limits, query, images)
    if beyond:
        log.info("p2w serve at %s takes %s; searching in this process", record.url, beyond)
        return None
    try:
        rows = search(record, query, [i.read_bytes() for i in images], timeout)
    except Refused as exc:
        if exc.status != 413:  # the server's limits are not this process's: search here instead
            raise
        log.info("p2w serve at %s refused the image (%s); searching in this process", record.url, exc)
        return None
    except Unreachable as exc:
        log.info("p2w serve at %s did not answer (%s); searching in this process", record.url, exc)
        if exc.dead:
            discovery.forget(settings, record)
        return None
    log.info("searched through p2w serve at %s", record.url)
    return [Hit.from_json(r) for r in rows]


def _beyond(limits: dict[str, int], query: dict[str, Any], images: Sequence[Path]) -> str | None:
    """What of the query a server with ``limits`` does not take (None: it takes all of it): a script that works
    without a server must work the same with one, so such a query is searched in this process."""
    if not limits:
        return "requests of an older p2w"
    try:
        sizes = [i.stat().st_size for i in images]
    except OSError:
        return "no image that cannot be read"  # the in-process search names the problem
    if query.get("k", 0) > limits["k"]:
        return f"at most {limits['k']} results"
    if query.get("ef") is not None and query["ef"] > limits["ef"]:
        return f"an ef of at most {limits['ef']}"
    if len(images) > limits["images"]:
        return f"at most {limits['images']} images"
    if any(size > limits["upload_bytes"] for size in sizes):
        return f"images of at most {limits['upload_bytes']} bytes"
    return None
