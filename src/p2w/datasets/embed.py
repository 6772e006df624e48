"""``embed_dataset``: the image embeddings of any collection in clip-retrieval's layout (``p2w.core.layout``).

The sources (folders, path lists, webdataset shards: ``p2w.core.sources``) split deterministically into parts; each
part is decoded (``p2w.datasets.rows``), run through the image tower and written atomically where it was computed
(``write``), so a re-run with the same sources skips the parts that are done, and ``kill -9`` of anything, then a
re-run, leaves every input row in the layout exactly once. The engine is an option, not a fork: the same two steps
run in this process (decoding in DataLoader workers beside the tower) or as Ray Data stages
(``p2w.datasets.on_ray``: decoding as CPU tasks, the tower in an actor pool); Ray is imported only then.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from p2w.core import layout
from p2w.core.backbone import Backbone
from p2w.core.devices import default_workers
from p2w.core.features import as_given, worker_init
from p2w.core.sources import Part, Problems, plan
from p2w.datasets.cluster import check_address
from p2w.datasets.rows import PartRows, Transform, gather
from p2w.datasets.tower import Job, Options, write
from p2w.errors import P2WError
from p2w.progress import Progress
from p2w.spec import BackboneSpec


@dataclass
class EmbedReport:
    """What a run did: parts written now and before, rows written, what was bad (by reason), time."""

    out: Path
    backbone: str
    parts: int
    written: int = 0
    resumed: int = 0  # parts already done before this run
    rows: int = 0
    problems: Problems = field(default_factory=Problems)
    seconds: float = 0.0
    engine: str = "process"
    engine_stats: str = ""  # on Ray: Ray Data's per-stage statistics (report.json's "ray_stats")

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "out": str(self.out),
            "backbone": self.backbone,
            "engine": self.engine,
            "parts": self.parts,
            "written": self.written,
            "resumed": self.resumed,
            "rows": self.rows,
            "skipped": self.problems.counts(),
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds > 0 else None,
        }


def embed_dataset(
    sources: Sequence[str],
    out: Path,
    spec: BackboneSpec,
    load_backbone: Callable[[], Backbone],
    options: Options | None = None,
    progress: Progress | None = None,
    ray: str | None = None,
    ray_workers: int = 1,
    gpus_per_worker: float = 0.0,
) -> EmbedReport:
    """Embed ``sources`` into the layout at ``out`` with the backbone ``load_backbone()`` returns (loaded only when a
    part is left to do), e.g. ``embed_dataset(["shards/{00000..00009}.tar"], Path("emb"), spec, load)``.

    ``ray``: None (this process), ``"local"`` (a private local cluster, stopped at the end), ``"auto"`` (the cluster
    this machine belongs to) or ``"ray://HOST:PORT"``; ``ray_workers`` tower actors of ``gpus_per_worker`` GPUs each.
    """
    start = time.perf_counter()
    if ray is not None:
        check_address(ray)
    options = options or Options()
    if options.dtype not in layout.DTYPES:
        raise P2WError(f"unknown --dtype {options.dtype!r}; use {' or '.join(layout.DTYPES)}")
    found = plan(sources, options.rows_per_part, options.path_column, options.caption_column)
    if not found.parts:
        raise P2WError(f"no images found in {', '.join(sources)}")
    report = EmbedReport(out, spec.id, len(found.parts), problems=found.problems, engine=ray or "process")
    old = layout.Manifest.read(out)
    if old is not None:  # another backbone, other sources or options: refused before any model is loaded
        asked = dataclasses.replace(old, backbone=spec.id, inputs=found.inputs, parts=len(found.parts))
        layout.check_same(out, old, dataclasses.replace(asked, **_options_fields(options)))
    before = layout.done(out, len(found.parts)) if old is not None else set()
    if len(before) < len(found.parts):
        backbone = load_backbone()
        manifest = _manifest(spec, backbone, found.inputs, len(found.parts), options)
        before = layout.start(out, manifest)
        todo = [p for p in found.parts if p.id not in before]
        job = Job(out, len(found.parts), options)
        transform = Transform.of(backbone.preprocess, backbone.draft_size)
        run = _in_process if ray is None else functools.partial(_on_ray, ray, ray_workers, gpus_per_worker, spec)
        run(backbone, transform, todo, job, report, progress)
    report.resumed = len(before)
    stats = {"ray_stats": report.engine_stats.splitlines()} if report.engine_stats else {}
    layout.write_report(out, {"problems": report.problems.to_json(), "summary": report.to_json(), **stats})
    report.seconds = time.perf_counter() - start
    return report


def _options_fields(options: Options) -> dict[str, Any]:
    return {"dtype": options.dtype, "rows_per_part": options.rows_per_part, "text": options.text}


def _manifest(
    spec: BackboneSpec, backbone: Backbone, inputs: list[dict[str, Any]], count: int, options: Options
) -> layout.Manifest:
    draft = backbone.draft_size
    return layout.Manifest(
        spec.id,
        backbone.embed_dim,
        options.dtype,
        count,
        options.rows_per_part,
        inputs,
        {"transform": repr(backbone.preprocess), "jpeg_draft": draft, "decoder": "p2w.core.images.decode_image"},
        options.text,
    )


def _in_process(
    backbone: Backbone,
    transform: Transform,
    parts: list[Part],
    job: Job,
    report: EmbedReport,
    progress: Progress | None,
) -> None:
    workers = job.options.workers
    if workers is None:
        workers = default_workers(backbone.placement.device)
    for part in parts:
        rows, problems = gather(_loader(part, transform, workers))
        done = write(backbone, transform, part, rows, problems, job)
        _count(report, done, progress)


def _count(report: EmbedReport, done: tuple[int, Problems], progress: Progress | None) -> None:
    report.written += 1
    report.rows += done[0]
    report.problems.merge(done[1])
    if progress:
        progress("parts", report.written, report.parts - report.resumed)


def _loader(part: Part, transform: Transform, workers: int) -> torch.utils.data.DataLoader[Any]:
    return torch.utils.data.DataLoader(
        PartRows(part, transform),
        batch_size=None,  # rows one by one: the tower batches them
        num_workers=workers,
        worker_init_fn=functools.partial(worker_init, os.getpid()) if workers else None,
        collate_fn=as_given,
        persistent_workers=False,
    )


def _on_ray(
    address: str,
    workers: int,
    gpus: float,
    spec: BackboneSpec,
    backbone: Backbone,
    transform: Transform,
    parts: list[Part],
    job: Job,
    report: EmbedReport,
    progress: Progress | None,
) -> None:
    from p2w.datasets.on_ray import run  # Ray: only with --ray

    stats: list[str] = []
    for done in run(address, parts, job, spec, backbone.placement, workers, gpus, transform, stats):
        _count(report, done, progress)
    report.engine_stats = "".join(stats)
