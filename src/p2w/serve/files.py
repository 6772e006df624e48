"""The files ``p2w serve`` may read for the page: a gallery item's local file (``Gallery.local_file``), opened
without following a symlink and checked again on the open descriptor, so what is checked is what is read.

A file is servable while it is a regular file (not a symlink, FIFO or device) and, where the gallery recorded them
(the catalog does), of the recorded size and modification time; anything else is "not found".
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import BinaryIO

from p2w.core.gallery import Gallery, LocalFile
from p2w.errors import P2WError
from p2w.serve.errors import NotFound


def servable(gallery: Gallery, item: int) -> LocalFile:
    """Item ``item``'s local file, checked with ``lstat``; ``NotFound`` otherwise."""
    try:
        file = gallery.local_file(item)
    except P2WError as exc:  # an id the gallery does not have
        raise NotFound(str(exc)) from exc
    if file is None:
        raise NotFound(f"item {item} of {gallery.name} is no local file this server shows")
    try:
        st = os.lstat(file.path)
    except OSError as exc:
        raise NotFound(f"photo {item} is gone from disk") from exc
    if not unchanged(st, file):
        raise changed(item)
    return file


def open_checked(file: LocalFile, item: int) -> tuple[BinaryIO, int]:
    """``file`` opened without following a symlink (``O_NOFOLLOW``; ``O_NONBLOCK``, so that a FIFO cannot hang the
    open) and checked again on the open file; with the number of bytes to read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(file.path, flags)
    except FileNotFoundError as exc:
        raise NotFound(f"photo {item} is gone from disk") from exc
    except OSError as exc:  # ELOOP: a symlink now stands there
        raise changed(item) from exc
    opened = os.fdopen(fd, "rb")
    st = os.fstat(opened.fileno())
    if not unchanged(st, file):
        opened.close()
        raise changed(item)
    return opened, st.st_size


def unchanged(st: os.stat_result, file: LocalFile) -> bool:
    """A regular file, of the recorded size and modification time where they were recorded."""
    recorded = file.size is None or (st.st_size, st.st_mtime_ns) == (file.size, file.mtime_ns)
    return stat.S_ISREG(st.st_mode) and recorded


def changed(item: int) -> NotFound:
    return NotFound(f"photo {item} changed on disk since it was indexed; run p2w index again")


def thumb_key(file: LocalFile) -> str:
    """The name a thumbnail is kept under: the content hash where the gallery has it, else one of path, size and
    modification time (a changed file gets a new thumbnail)."""
    if file.hash:
        return file.hash
    st = os.lstat(file.path)
    return hashlib.sha256(f"{file.path}\0{st.st_size}\0{st.st_mtime_ns}".encode(errors="surrogateescape")).hexdigest()
