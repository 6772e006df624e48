"""Content hashes of files (SHA-256), read in 1 MiB blocks; large files' hashes remembered in a folder given by the
caller (``cached_sha256``), so a 1.7 GB weights file is not re-read by every command."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2w.atomic import atomic_path
from p2w.progress import Progress

log = logging.getLogger(__name__)
_DIGESTS: dict[str, str] = {}  # this process's hashes, by (path, size, mtime)
DISK_CACHE_MIN_BYTES = 64 << 20  # smaller files hash in well under a second


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, e.g. ``sha256_file("a.jpg")``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_or_none(path: str | Path) -> str | None:
    """``sha256_file``, or None when the file cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def sha256_many(paths: list[str], workers: int = 4, progress: Progress | None = None) -> dict[str, str | None]:
    """``sha256_or_none`` of many files, read in ``workers`` threads (hashlib releases the GIL)."""
    out: dict[str, str | None] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, (p, d) in enumerate(zip(paths, pool.map(sha256_or_none, paths), strict=True), 1):
            out[p] = d
            if progress and (i % 200 == 0 or i == len(paths)):
                progress("hashing", i, len(paths))
    return out


def cached_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """``sha256_file`` remembered by (path, size, mtime): in this process, and for files of at least
    ``DISK_CACHE_MIN_BYTES`` in ``cache_dir/digests.json`` when a folder is given. A missing file hashes as
    ``"missing"``."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in _DIGESTS:
        disk = cache_dir / "digests.json" if cache_dir is not None and st.st_size >= DISK_CACHE_MIN_BYTES else None
        known = _read_json(disk) if disk else {}
        if key not in known:
            known[key] = sha256_file(path)
            if disk:
                _write_json(disk, known)
        _DIGESTS[key] = known[key]
    return _DIGESTS[key]


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, str]) -> None:
    """Best effort (a read-only home only costs a re-hash next time); atomic, so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data), encoding="utf-8")
    except OSError as exc:
        log.debug("cannot write digest cache %s: %s", path, exc)
