"""Videos as frames (PyAV, whose wheels carry ffmpeg): one frame every ``every`` seconds, near-identical consecutive
frames dropped, within a time limit per file; a frame at a given time (a result's thumbnail).

A video that cannot be opened or decoded, or takes longer than its time limit, is a ``VideoError`` with the reason,
so that indexing skips it and goes on with the rest.
"""

from __future__ import annotations

import time as clock
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from p2w.errors import P2WError

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv")
EVERY = 1.0  # seconds between sampled frames (measured: docs/performance.md, "Videos")
TIME_LIMIT = 120.0  # seconds one video may take to decode before it is skipped
SAME = 3.0  # mean absolute difference (of 255) under which a frame is the previous one again
SEEK = 10.0  # a gap (seconds) to the next sampled frame worth a seek instead of decoding through it
_THUMB = 32  # side of the grey thumbnails frames are compared by


class VideoError(P2WError):
    """A video that cannot be read: its reason is what indexing records."""


@dataclass(frozen=True)
class Frame:
    """A sampled frame: its time in seconds from the start, and the image."""

    time: float
    image: Image.Image


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frames(path: str | Path, every: float = EVERY, limit: float = TIME_LIMIT) -> Iterator[Frame]:
    """Frames of the video at ``path`` at 0, ``every``, 2 x ``every``, ... seconds (the first decoded at or after
    each), a frame nearly identical to the one kept before it left out. Raises ``VideoError`` for a video that cannot
    be read, that holds no frame, or that takes longer than ``limit`` seconds."""
    import av

    start = clock.monotonic()
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            found = 0
            for frame in _sampled(container, stream, every):
                if clock.monotonic() - start > limit:
                    raise VideoError(f"decoding took over {limit:.0f} s (the time limit of a video)")
                found += 1
                yield frame
            if not found:
                raise VideoError("no frame could be decoded")
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, MemoryError) as exc:
        raise VideoError(f"cannot be decoded: {exc}") from exc


def _sampled(container: Any, stream: Any, every: float) -> Iterator[Frame]:
    """The frames at each multiple of ``every``; seeks over long gaps, decodes through short ones."""
    target, last = 0.0, None
    while True:
        got = None
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < target:
                continue
            got = frame
            break
        if got is None:
            return
        image = got.to_image()
        small = _grey(image)
        if last is None or _differs(small, last):
            yield Frame(round(float(got.time), 3), image)
            last = small
        target = max(target + every, float(got.time) + 1e-3)
        if target - float(got.time) > SEEK:
            container.seek(int(target / float(stream.time_base)), stream=stream, backward=True)


def _grey(image: Image.Image) -> bytes:
    return image.convert("L").resize((_THUMB, _THUMB), Image.Resampling.BILINEAR).tobytes()


def _differs(a: bytes, b: bytes) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a) >= SAME


def frame_at(source: str | Path | BinaryIO, at: float) -> Image.Image:
    """The first frame at or after ``at`` seconds (the last one when ``at`` is past the end) of the video at a path or
    in an open file."""
    import av

    try:
        with av.open(source if hasattr(source, "read") else str(source), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            container.seek(int(max(at, 0.0) / float(stream.time_base)), stream=stream, backward=True)
            last = None
            for frame in container.decode(stream):
                last = frame
                if frame.time is not None and frame.time + 1e-3 >= at:
                    break
            if last is None:
                raise VideoError("no frame could be decoded")
            return last.to_image()
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoError(f"cannot be decoded: {exc}") from exc


def created(path: str | Path) -> str | None:
    """The container's ``creation_time`` (ISO 8601, UTC, as cameras and phones write it), None where it has none."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            value = container.metadata.get("creation_time")
    except (av.FFmpegError, OSError, ValueError):
        return None
    return value if isinstance(value, str) and value[:4].isdigit() else None


@dataclass(frozen=True)
class Videos:
    """How ``p2w index`` takes videos: a frame every ``every`` seconds, at most ``limit`` seconds of decoding each."""

    every: float = EVERY
    limit: float = TIME_LIMIT

    def __post_init__(self) -> None:
        if not 0.05 <= self.every <= 3600:
            raise P2WError(f"--video-every {self.every} is not a number of seconds from 0.05 to 3600")
