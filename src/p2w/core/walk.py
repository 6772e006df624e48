"""Finding photos: a recursive walk that skips hidden files, junk folders and excluded globs, and never loops."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2w.core.images import HEIF, IMAGE_SUFFIXES

JUNK_DIRS = frozenset({"@eaDir", ".git", "node_modules", "__MACOSX", "$RECYCLE.BIN", ".Trash", ".thumbnails"})
HEIF_SUFFIXES = (".heic", ".heif", ".avif")


@dataclass(frozen=True)
class Found:
    """A photo file and the facts that tell whether it changed."""

    path: str  # absolute
    size: int
    mtime_ns: int


def suffixes() -> tuple[str, ...]:
    """Image suffixes indexed here: HEIC/AVIF only when pillow-heif is installed."""
    return tuple(s for s in IMAGE_SUFFIXES if HEIF or s not in HEIF_SUFFIXES)


def scan(roots: Sequence[Path], exclude: Sequence[str] = (), include_hidden: bool = False) -> Iterator[Found]:
    """Every image file under ``roots`` (files given directly count too), each real folder visited once."""
    wanted = suffixes()
    seen: set[tuple[int, int]] = set()
    for root in roots:
        root = Path(os.path.abspath(root.expanduser()))
        if root.is_file():
            st = root.stat()
            yield Found(str(root), st.st_size, st.st_mtime_ns)
            continue
        yield from _walk(root, root, wanted, exclude, include_hidden, seen)


def _walk(
    folder: Path, root: Path, wanted: tuple[str, ...], exclude: Sequence[str], hidden: bool, seen: set[tuple[int, int]]
) -> Iterator[Found]:
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree, or a second way into a folder
            return
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if (not hidden and name.startswith(".")) or name.startswith("._") or _excluded(entry.path, root, exclude):
            continue
        try:
            if entry.is_dir():  # follows symlinked folders; `seen` stops loops
                if name not in JUNK_DIRS:
                    yield from _walk(Path(entry.path), root, wanted, exclude, hidden, seen)
            elif entry.is_file() and os.path.splitext(name)[1].lower() in wanted:
                info = entry.stat()
                yield Found(entry.path, info.st_size, info.st_mtime_ns)
        except OSError:
            continue


def _excluded(path: str, root: Path, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)
