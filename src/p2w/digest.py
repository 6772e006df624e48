"""Content hashes of files (SHA-256), read in 1 MiB blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


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


def sha256_many(
    paths: list[str], workers: int = 4, progress: Callable[[int, int], None] | None = None
) -> dict[str, str | None]:
    """``sha256_or_none`` of many files, read in ``workers`` threads (hashlib releases the GIL)."""
    out: dict[str, str | None] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, (p, d) in enumerate(zip(paths, pool.map(sha256_or_none, paths), strict=True), 1):
            out[p] = d
            if progress and (i % 200 == 0 or i == len(paths)):
                progress(i, len(paths))
    return out
