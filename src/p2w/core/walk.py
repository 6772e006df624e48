"""Finding photos: a recursive walk that skips hidden files, junk folders and excluded globs, and never loops."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2w.core.images import IMAGE_SUFFIXES

JUNK_DIRS = frozenset({"@eaDir", ".git", "node_modules", "__MACOSX", "$RECYCLE.BIN", ".Trash", ".thumbnails"})


@dataclass(frozen=True)
class Found:
    """A photo file and the facts that tell whether it changed."""

    path: str  # absolute
    size: int
    mtime_ns: int


def scan(
    roots: Sequence[Path],
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    unreadable: list[tuple[str, str]] | None = None,
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
) -> Iterator[Found]:
    """Every image file (every file with one of ``suffixes``) under ``roots`` (files given directly count too), each
    real folder visited once.

    A folder that cannot be listed, or an entry whose type or size cannot be read (a permission change, an EIO on a
    network share, an unmounted sub-volume), is appended to ``unreadable`` as ``(path, reason)``: what was under it
    is unknown, not gone, and a caller must not treat its absence as a deletion.
    """
    seen: set[tuple[int, int]] = set()
    problems = unreadable if unreadable is not None else []
    for root in roots:
        root = Path(os.path.abspath(root.expanduser()))
        try:
            if root.is_file():
                st = root.stat()
                yield Found(str(root), st.st_size, st.st_mtime_ns)
                continue
        except OSError as exc:
            problems.append((str(root), f"cannot be read: {_reason(exc)}"))
            continue
        yield from _walk(root, root, exclude, include_hidden, seen, problems, suffixes)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _walk(
    folder: Path,
    root: Path,
    exclude: Sequence[str],
    hidden: bool,
    seen: set[tuple[int, int]],
    problems: list[tuple[str, str]],
    suffixes: tuple[str, ...],
) -> Iterator[Found]:
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree, or a second way into a folder
            return
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        problems.append((str(folder), f"cannot be listed: {_reason(exc)}"))
        return
    for entry in entries:
        name = entry.name
        if (not hidden and name.startswith(".")) or name.startswith("._") or _excluded(entry.path, root, exclude):
            continue
        try:
            if entry.is_dir():  # follows symlinked folders; `seen` stops loops
                if name not in JUNK_DIRS:
                    yield from _walk(Path(entry.path), root, exclude, hidden, seen, problems, suffixes)
            elif entry.is_file() and os.path.splitext(name)[1].lower() in suffixes:
                info = entry.stat()
                yield Found(entry.path, info.st_size, info.st_mtime_ns)
        except OSError as exc:
            problems.append((entry.path, f"cannot be read: {_reason(exc)}"))


def _excluded(path: str, root: Path, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


class Beneath:
    """Tells whether a path is one of some folders or under one of them."""

    def __init__(self, folders: Sequence[str]) -> None:
        self.exact = set(folders)
        self.prefixes = tuple(f.rstrip(os.sep) + os.sep for f in folders)

    def covers(self, path: str) -> bool:
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))
