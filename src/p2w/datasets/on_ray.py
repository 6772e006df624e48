"""``embed_dataset`` on Ray Data: the same two steps as in this process, as two streaming stages.

1. ``_decode`` — a Ray task per part (CPU): read the part (a shard streamed, or a list of files), hash, decode and crop
   every row to uint8 pixels (``p2w.datasets.rows.decode_part``).
2. ``_Tower`` — an actor pool (``workers`` actors of ``gpus`` GPUs each): the rest of the transform, the image tower,
   and the part written atomically into the layout from the actor (``p2w.datasets.embed.write``): vectors never
   travel to the driver, which sees a count and the part's problems.

Ray Data streams with backpressure (a few parts in flight, not the dataset) and retries a task or restarts an actor
that dies; a part written twice is written whole twice (atomic renames), so every row is there exactly once. A part
is the unit: a 10,000-image shard is about 1.5 GB of 224-pixel uint8 pixels in the object store while in flight.

``address``: ``"local"`` starts a private cluster on this machine (stopped at the end), ``"auto"`` joins the cluster
this machine belongs to, ``"ray://HOST:PORT"`` a remote one (p2w must be installed on its nodes). Where this process
is already connected (``ray.is_initialized()``), that connection is used and kept.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from p2w.core.backbone import Backbone
from p2w.core.devices import Placement, available_cpus
from p2w.core.sources import Part, Problems
from p2w.datasets.cluster import RAY_HINT, connect
from p2w.datasets.rows import Transform, decode_part
from p2w.datasets.tower import Job, write
from p2w.errors import P2WError
from p2w.spec import BackboneSpec

DECODE_MEMORY = 1 << 30  # a worker with torch imported holds ~0.5 GiB before its part


def run(
    address: str,
    parts: list[Part],
    job: Job,
    spec: BackboneSpec,
    placement: Placement,
    workers: int,
    gpus: float,
    transform: Transform,
    stats: list[str] | None = None,
) -> Iterator[tuple[int, Problems]]:
    """Embed ``parts`` on the cluster at ``address``; yields each part's (rows written, problems) as it is done. At
    the end Ray Data's per-stage statistics (wall and CPU time, rows and bytes of each stage) go to ``stats``."""
    try:
        import ray
    except ImportError as exc:
        raise P2WError(RAY_HINT) from exc
    ours = connect(ray, address)
    try:
        ds: Any = ray.data.from_items(
            [{"part": pickle.dumps(p)} for p in parts], override_num_blocks=max(1, len(parts))
        )
        # a logical memory reservation per decoding task (a part's pixels); different resources also keep Ray Data
        # from fusing decoding into the tower's actors, where it would scale with the GPUs instead of the CPUs
        ds = ds.map(_decode, fn_kwargs={"transform": transform}, num_cpus=1, memory=DECODE_MEMORY)
        device = "cuda" if gpus > 0 else "cpu"
        precision = placement.precision if device == placement.device.type else "auto"
        ds = ds.map(
            _Tower,
            fn_constructor_args=(spec, device, precision, job, transform),
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            num_gpus=gpus or None,
            num_cpus=1,
        )
        for row in ds.iter_rows():
            yield int(row["rows"]), pickle.loads(row["problems"])
        if stats is not None:
            stats.append(ds.stats())
    finally:
        if ours:
            ray.shutdown()


def _decode(row: dict[str, Any], transform: Transform) -> dict[str, Any]:
    """Stage 1 (a CPU task): a part's rows decoded and cropped, with what was found bad."""
    part: Part = pickle.loads(row["part"])
    rows, problems = decode_part(part, transform)
    return {"part": row["part"], "rows": pickle.dumps(rows), "problems": pickle.dumps(problems)}


class _Tower:
    """Stage 2 (an actor): the backbone loaded once; each part through the tower and written from here."""

    def __init__(self, spec: BackboneSpec, device: str, precision: str, job: Job, transform: Transform) -> None:
        if device == "cpu":  # Ray gives a 1-CPU actor one OpenMP thread; a tower on the CPU uses the machine's, as
            import torch  # it does in a process of its own (decoding tasks are mostly waiting on it anyway)

            torch.set_num_threads(available_cpus())
        self.backbone = Backbone.load(spec, device=device, precision=precision)
        self.job, self.transform = job, transform

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        part: Part = pickle.loads(row["part"])
        written, problems = write(
            self.backbone, self.transform, part, pickle.loads(row["rows"]), pickle.loads(row["problems"]), self.job
        )
        return {"rows": written, "problems": pickle.dumps(problems)}
