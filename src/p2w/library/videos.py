"""Videos in the catalog: each is its frames (``p2w.core.video.frames``), embedded and committed one video at a time,
so an interruption loses at most the video in flight; a video that cannot be decoded, or not within its time limit,
is skipped with the reason (and not tried again until it changes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from p2w.core.dates import Taken
from p2w.core.video import VideoError, Videos, frames
from p2w.core.walk import Found
from p2w.library.catalog import Catalog
from p2w.progress import Progress


def embed_videos(
    catalog: Catalog,
    todo: Sequence[tuple[Found, str]],
    dates: dict[str, Taken],
    engine: Callable[[], Any],
    videos: Videos,
    batch_size: int,
    progress: Progress | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Embed the frames of each (file, content hash) of ``todo`` and store them; returns the videos stored and the
    (path, reason) of those skipped."""
    stored: list[str] = []
    skipped: list[tuple[str, str]] = []
    for done, (f, digest) in enumerate(todo, 1):
        try:
            sampled = list(frames(f.path, videos.every, videos.limit))
        except VideoError as exc:
            catalog.skip([(f.path, f.size, f.mtime_ns, str(exc))])
            skipped.append((f.path, str(exc)))
            continue
        model = engine()
        rows = []
        for i in range(0, len(sampled), batch_size):
            part = sampled[i : i + batch_size]
            feats = model.image_features([s.image for s in part]).float().cpu()
            norms = feats.norm(dim=1).clamp_min(1e-12)
            units = (feats / norms[:, None]).numpy().astype(np.float32)
            rows += [(s.time, u.tobytes(), float(n)) for s, u, n in zip(part, units, norms.tolist(), strict=True)]
        catalog.put_frames(f.path, (f.size, f.mtime_ns, digest, dates[f.path]), rows, model.backbone.embed_dim)
        stored.append(f.path)
        if progress:
            progress("videos", done, len(todo))
    return stored, skipped
