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
    """The server did not answer (refused, timed out): the caller falls back to an in-process search."""


class Refused(P2WError):
    """The server answered with an error (``status``, and its one-line message)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def call(record: ServerRecord, path: str, body: bytes, content_type: str, timeout: float = 60.0) -> Any:
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
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(str(exc)) from exc


def search(record: ServerRecord, query: dict[str, Any], images: Sequence[bytes] = ()) -> list[dict[str, Any]]:
    """The hits (``{"rank", "score", "path", "size", "mtime", "id"}``) of ``query`` (the fields of
    ``p2w.serve.service.Query``), the images' bytes uploaded first (in order: the i-th ``*`` takes the i-th)."""
    if images:
        uploads = [call(record, "/api/upload", data, "application/octet-stream")["upload"] for data in images]
        query = {**query, "images": [{"upload": u} for u in uploads]}
    answer = call(record, "/api/search", json.dumps(query).encode(), "application/json")
    return list(answer["results"])


def warm_search(
    settings: Settings,
    backbone: str,
    mapper: Path | None,
    query: dict[str, Any],
    images: Sequence[Path] = (),
) -> list[Hit] | None:
    """``query`` answered by the running ``p2w serve`` of ``backbone`` — the hits an in-process search would give —
    or None when there is no such server, it holds another mapper than ``mapper`` (a resolved file, for pic2word
    queries), or it does not answer (its stale record is then removed)."""
    record = discovery.find(settings, backbone)
    if record is None:
        return None
    if mapper is not None and (record.mapper is None or Path(record.mapper) != mapper.resolve()):
        log.debug("the server at %s holds mapper %s, not %s", record.url, record.mapper, mapper)
        return None
    if not all(i.is_file() for i in images):
        return None  # the in-process search names the problem
    try:
        rows = search(record, query, [i.read_bytes() for i in images])
    except Refused as exc:
        if exc.status != 413:  # the server's limits are not this process's: search here instead
            raise
        log.info("p2w serve at %s refused the image (%s); searching in this process", record.url, exc)
        return None
    except Unreachable as exc:
        log.info("p2w serve at %s did not answer (%s); searching in this process", record.url, exc)
        discovery.forget(settings, record)
        return None
    log.info("searched through p2w serve at %s", record.url)
    return [Hit(r["rank"], r["score"], r["path"], r["size"], r["mtime"], r["id"]) for r in rows]
