"""The tower step of a part: its decoded rows (``p2w.datasets.rows``) through the image tower, written atomically
into the layout (``p2w.core.layout.write_part``) where they were computed: this process, or a Ray actor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2w.core import layout
from p2w.core.backbone import Backbone
from p2w.core.sources import Part, Problems
from p2w.datasets.rows import Decoded, Transform, pixels, reason_kind


@dataclass(frozen=True)
class Options:
    """How a dataset is embedded: rows per part (folders and lists; a shard is a part), the vectors' dtype, the
    captions' text embeddings too, the tower's batch, decoding processes (None: the device's default), list
    columns."""

    rows_per_part: int = 10_000
    dtype: str = "float16"
    text: bool = False
    batch_size: int = 64
    workers: int | None = None
    path_column: str | None = None
    caption_column: str | None = None


@dataclass(frozen=True)
class Job:
    """What every worker needs to embed a part: the layout folder, the part count and the options."""

    out: Path
    count: int
    options: Options


def write(
    backbone: Backbone, transform: Transform, part: Part, rows: list[Decoded], problems: Problems, job: Job
) -> tuple[int, Problems]:
    """Run the decoded rows of ``part`` through the tower and write the part atomically; returns the rows written and
    what was bad (reasons of the rows that did not decode added)."""
    rows = sorted(rows, key=lambda r: r.index)
    for r in rows:
        if r.pixels is None:
            problems.add(reason_kind(r.reason), r.key if part.kind == "files" else f"{part.source}:{r.key}")
    good = [r for r in rows if r.pixels is not None]
    feats = _tower(backbone, transform, good, job.options.batch_size)  # (n, dim) float32
    norms = np.maximum(np.linalg.norm(feats, axis=1), 1e-12).astype(np.float32)
    text = _texts(backbone, [r.caption for r in good], job.options.batch_size) if job.options.text else None
    metadata = {
        "image_path": [r.key for r in good],
        "caption": [r.caption for r in good],
        "norm": norms.tolist(),
        "hash": [r.hash for r in good],
        "meta": [r.meta for r in good],
    }
    layout.write_part(job.out, part.id, job.count, feats / norms[:, None], metadata, job.options.dtype, text)
    return len(good), problems


def _tower(backbone: Backbone, transform: Transform, rows: list[Decoded], batch: int) -> np.ndarray:
    parts = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            parts.append(backbone.encode_image(pixels(rows[i : i + batch], transform)).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, backbone.embed_dim), dtype=np.float32)


def _texts(backbone: Backbone, captions: list[str | None], batch: int) -> np.ndarray:
    """The captions' unit text embeddings; a row without a caption is zeros."""
    out = np.zeros((len(captions), backbone.embed_dim), dtype=np.float32)
    have = [i for i, c in enumerate(captions) if c]
    with torch.inference_mode():
        for i in range(0, len(have), batch):
            rows = have[i : i + batch]
            feats = backbone.encode_text(backbone.tokenize([str(captions[r]) for r in rows])).float()
            out[rows] = torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()
    return out
