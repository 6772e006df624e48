"""When a photo was taken, and the date bounds a search is narrowed by (``--after``, ``--before``).

A capture time is kept as *wall-clock seconds*: the clock the photo was taken by, read as if it were UTC
(``calendar.timegm`` of the naive date and time), with the offset from UTC in minutes where it is known. A search
for "July 2023" then means July 2023 on the camera's clock, wherever the photo was taken and wherever it is searched.

- EXIF ``DateTimeOriginal`` (with ``OffsetTimeOriginal`` when the camera wrote one) is the capture time;
- else the file's modification time, on this machine's clock (its offset known).

Bounds are ISO dates, whole or partial: ``2023``, ``2023-07``, ``2023-07-14``, ``2023-07-14T10:30``. Both bounds mean
the start of the period they name: ``--after 2023-07`` keeps photos taken from 1 July 2023 on, ``--before 2024``
those taken before 1 January 2024; ``--after 2023 --before 2024`` is the year 2023.

No numpy here: a warm ``p2w search`` parses its bounds with this module.
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from p2w.errors import P2WError

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
SOURCES = ("exif", "mtime")

_BOUND = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?")
_EXIF_TIME = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


@dataclass(frozen=True)
class Taken:
    """A capture time: wall-clock seconds, the offset from UTC in minutes (None: not known) and where it came from
    (``"exif"``, ``"metadata"``: a video container's creation time, or ``"mtime"``)."""

    seconds: int
    offset: int | None
    source: str

    def iso(self) -> str:
        """``2023-07-14T10:30:00+02:00`` (no offset where it is not known)."""
        return iso(self.seconds, self.offset)


def iso(seconds: int, offset: int | None) -> str:
    """Wall-clock seconds (and an offset in minutes) as an ISO 8601 date and time."""
    text = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
    if offset is None:
        return text.isoformat()
    sign, minutes = ("+" if offset >= 0 else "-"), abs(offset)
    return f"{text.isoformat()}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _wall(moment: dt.datetime) -> int:
    return calendar.timegm(moment.timetuple())


def from_mtime(mtime_ns: int) -> Taken:
    """The modification time on this machine's clock."""
    local = dt.datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
    offset = local.utcoffset()
    return Taken(_wall(local), None if offset is None else int(offset.total_seconds() // 60), "mtime")


def from_exif(original: object, offset: object = None) -> Taken | None:
    """EXIF's ``DateTimeOriginal`` ("2023:07:14 10:30:00") and ``OffsetTimeOriginal`` ("+02:00"); None for a missing
    or impossible value (cameras write "0000:00:00 00:00:00" when their clock was never set)."""
    found = _EXIF_TIME.match(original.strip()) if isinstance(original, str) else None
    if found is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in found.groups())
        moment = dt.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    minutes = None
    shift = _OFFSET.fullmatch(offset.strip()) if isinstance(offset, str) else None
    if shift is not None:
        minutes = (1 if shift[1] == "+" else -1) * (int(shift[2]) * 60 + int(shift[3]))
    return Taken(_wall(moment), minutes, "exif")


def capture_time(path: str | Path, mtime_ns: int) -> Taken:
    """When the photo at ``path`` was taken: its EXIF date when it has one (only its header is read), else its
    modification time ``mtime_ns``; a video's: its container's ``creation_time`` (UTC), else its modification time."""
    from PIL import Image

    from p2w.core.video import created, is_video

    if is_video(path):
        return from_created(created(path)) or from_mtime(mtime_ns)

    from p2w.core.images import register_heif

    register_heif()
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            inner = exif.get_ifd(EXIF_IFD)
            taken = from_exif(inner.get(DATE_TIME_ORIGINAL), inner.get(OFFSET_TIME_ORIGINAL))
    except Exception:  # no EXIF to read (a PNG, a damaged header, a decompression bomb): the file's time
        taken = None
    return taken or from_mtime(mtime_ns)


def from_created(value: str | None) -> Taken | None:
    """A video container's ``creation_time`` ("2023-07-14T08:30:00.000000Z", UTC) as a capture time (offset 0)."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    utc = moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment
    return Taken(_wall(utc.replace(tzinfo=None)), 0, "metadata")


def parse_bound(text: str, option: str = "date") -> int:
    """The wall-clock seconds at the start of the period ``text`` names (``2023``, ``2023-07``, ``2023-07-14``,
    ``2023-07-14T10:30``); anything else is a ``P2WError`` naming ``option``."""
    found = _BOUND.fullmatch(text.strip())
    if found is None:
        raise P2WError(f"{option} {text!r} is not a date: give 2023, 2023-07, 2023-07-14 or 2023-07-14T10:30")
    year, month, day, hour, minute, second = (int(g) if g else None for g in found.groups())
    try:
        moment = dt.datetime(year or 1970, month or 1, day or 1, hour or 0, minute or 0, second or 0)
    except ValueError as exc:
        raise P2WError(f"{option} {text!r} is not a date: {exc}") from exc
    return _wall(moment)


@dataclass(frozen=True)
class Where:
    """Which photos a search may return: only under the folder ``within`` (an absolute path), only taken at or after
    ``after`` and before ``before`` (wall-clock seconds). ``Where()`` keeps everything."""

    within: str | None = None
    after: int | None = None
    before: int | None = None

    def __bool__(self) -> bool:
        return self.within is not None or self.dated

    @property
    def dated(self) -> bool:
        """Whether it narrows by date."""
        return self.after is not None or self.before is not None

    @classmethod
    def parse(cls, within: str | Path | None = None, after: str | None = None, before: str | None = None) -> Where:
        """From the options (``--in``, made absolute; ``--after``, ``--before``); a range that keeps nothing is an
        error."""
        folder = None if within is None else os.path.abspath(os.path.expanduser(within))
        low = None if after is None else parse_bound(after, "--after")
        high = None if before is None else parse_bound(before, "--before")
        if low is not None and high is not None and low >= high:
            raise P2WError(f"--after {after} is not before --before {before}: no photo can pass both")
        return cls(folder, low, high)

    def to_wire(self) -> dict[str, str]:
        """The server's JSON fields (``within``, and the bounds as ISO dates and times)."""
        fields = {"within": self.within, "after": _bound_iso(self.after), "before": _bound_iso(self.before)}
        return {k: v for k, v in fields.items() if v is not None}

    def describe(self) -> str:
        """For messages: ``under /photos, taken from 2023-07-01T00:00:00``."""
        parts = [f"under {self.within}"] if self.within else []
        if self.after is not None:
            parts.append(f"taken from {iso(self.after, None)}")
        if self.before is not None:
            parts.append(f"taken before {iso(self.before, None)}")
        return ", ".join(parts) or "any photo"


def _bound_iso(seconds: int | None) -> str | None:
    return None if seconds is None else iso(seconds, None)


def capture_times(
    files: Sequence[tuple[str, int]], workers: int = 8, progress: Callable[[str, int, int], object] | None = None
) -> dict[str, Taken]:
    """``capture_time`` of many (path, mtime_ns) at once, on I/O threads (only each file's header is read)."""
    out: dict[str, Taken] = {}
    if not files:
        return out
    with ThreadPoolExecutor(max(1, min(workers, len(files)))) as pool:
        for (path, _), taken in zip(files, pool.map(lambda f: capture_time(*f), files), strict=True):
            out[path] = taken
            if progress and len(out) % 256 == 0:
                progress("reading dates", len(out), len(files))
    if progress:
        progress("reading dates", len(out), len(files))
    return out
