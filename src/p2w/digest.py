"""Content hashes of files (SHA-256), read in 1 MiB blocks."""

from __future__ import annotations

import hashlib
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
