"""The record a running ``p2w serve`` leaves in ``P2W_HOME/servers/<backbone>.json`` so that ``p2w search`` for the
same backbone can use it: URL, token, pid, backbone and mapper. Stdlib only: the warm path imports no torch.

A record is written atomically, readable by its owner only (it holds the token), removed when the server stops;
a stale one (dead pid, refused connection) is ignored and removed by whoever finds it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p2w.atomic import atomic_path
from p2w.core.lock import pid_alive
from p2w.settings import Settings
from p2w.spec import safe_name


@dataclass(frozen=True)
class ServerRecord:
    """Where a server listens and what it holds."""

    url: str  # http://127.0.0.1:PORT
    token: str
    pid: int
    backbone: str  # backbone id
    mapper: str | None  # the mapper file it loaded (resolved path), if any
    version: str
    limits: dict[str, int] = field(default_factory=dict)  # what one request may ask for (``requests.Limits``)

    def to_json(self) -> dict[str, object]:
        """The record's JSON form."""
        return asdict(self)


def record_path(settings: Settings, backbone: str) -> Path:
    """``P2W_HOME/servers/<backbone id as a file name>.json``."""
    return settings.home / "servers" / f"{safe_name(backbone)}.json"


def write(settings: Settings, record: ServerRecord) -> Path:
    """Publish ``record`` (owner-only permissions); an existing record of a dead server is replaced."""
    path = record_path(settings, record.backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(json.dumps(record.to_json()), encoding="utf-8")
    return path


def remove(settings: Settings, record: ServerRecord) -> None:
    """Remove ``record`` if it is still the one on disk (a newer server's record is left alone)."""
    path = record_path(settings, record.backbone)
    if read(path) == record:
        with contextlib.suppress(OSError):
            path.unlink()


def read(path: Path) -> ServerRecord | None:
    """The record in ``path``, or None when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(**{k: data[k] for k in ServerRecord.__dataclass_fields__})  # an older server's: unused
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find(settings: Settings, backbone: str) -> ServerRecord | None:
    """The live server of ``backbone``, if one is recorded; a record of a dead process is removed."""
    path = record_path(settings, backbone)
    record = read(path)
    if record is None:
        return None
    if record.pid <= 0 or not pid_alive(record.pid):
        forget(settings, record)
        return None
    return record


def forget(settings: Settings, record: ServerRecord) -> None:
    """Drop a record found stale (dead pid, or its server refused the connection)."""
    remove(settings, record)
