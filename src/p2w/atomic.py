"""Atomic file writes: write a temporary file beside the target, then rename it over the target."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o666) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto it when the block succeeds, removed when it fails.

    Readers never see half a file, and an interrupted write leaves the old file (or none) in place, e.g.
    ``with atomic_path(p) as tmp: tmp.write_text(...)``. The file is created with ``mode`` less the umask, as any
    program's files are (``0o600``: readable by its owner only, e.g. a file holding a token).
    """
    tmp = _create(path, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create(path: Path, mode: int) -> Path:
    """A new, empty file beside ``path`` under an unused name (``O_EXCL``: never someone else's file)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")
