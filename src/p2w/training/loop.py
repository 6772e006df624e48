"""``p2w train``: fit a Pic2Word mapper on unlabeled images with CLIP frozen, as the paper does, but without
recomputing what cannot change: image features come from a cache, and the text tower runs over ~6 positions."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from p2w.core.backbone import Backbone
from p2w.core.devices import resolve_device, resolve_precision
from p2w.errors import P2WError, TrainingInterrupted
from p2w.mappers.files import save_mapper
from p2w.mappers.network import Mapper
from p2w.settings import Settings
from p2w.spec import BackboneSpec
from p2w.training.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from p2w.training.config import (
    Callbacks,
    EpochSummary,
    NoCallbacks,
    RunPaths,
    TrainConfig,
    TrainResult,
    check_start,
    resumed_config,
)
from p2w.training.data import list_images
from p2w.training.distributed import Dist
from p2w.training.state import Run
from p2w.training.step import TrainStep, adamw, lr_at
from p2w.training.trainset import load_features, split_rows, val_recall

log = logging.getLogger(__name__)


REPORT_EVERY = 10  # steps between progress reports (each one waits for the GPU)


def train(cfg: TrainConfig, settings: Settings | None = None, callbacks: Callbacks | None = None) -> TrainResult:
    """Train a mapper and register it as ``P2W_HOME/mappers/NAME.safetensors``; see ``TrainConfig``."""
    settings = settings or Settings.from_env()
    name = cfg.name or datetime.now(timezone.utc).strftime("mapper-%Y%m%d-%H%M%S")
    paths = RunPaths.of(settings, name)
    check_start(cfg, name, paths)
    if cfg.resume:
        cfg = resumed_config(cfg, read_checkpoint(paths.checkpoint))
    spec = settings.backbone(cfg.model, cfg.pretrained)
    cfg = replace(cfg, model=spec.model, pretrained=spec.pretrained)
    d = Dist.from_env(cfg.device)
    cb = (callbacks or NoCallbacks()) if d.is_main else NoCallbacks()
    try:
        run, skipped = _prepare(cfg, name, spec, settings, d, cb)
        if cfg.resume:
            restore_checkpoint(run, paths.checkpoint)
        _loop(run, paths.checkpoint, cb)
        if d.is_main:
            extra = {"trained_on": Path(cfg.data).name, "steps": str(run.step), "samples": str(len(run.train_rows))}
            save_mapper(run.mapper, paths.mapper, run.backbone.id, extra=extra)
        d.barrier()
        epochs = [EpochSummary(**h) for h in run.history]
        return TrainResult(
            name, paths.mapper, run.backbone.id, len(run.train_rows), skipped, epochs, run.step_losses, d.is_main
        )
    finally:
        d.close()


def _prepare(
    cfg: TrainConfig, name: str, spec: BackboneSpec, settings: Settings, d: Dist, cb: Callbacks
) -> tuple[Run, list[tuple[str, str]]]:
    """Load the backbone and the training set's features, and build the mapper, optimiser and step."""
    files = list_images(Path(cfg.data).expanduser())
    device = d.device(cfg.device)
    cb.stage(f"loading {Path(str(cfg.model)).name} with weights {Path(str(cfg.pretrained)).name}")
    precision = resolve_precision(cfg.precision, resolve_device(device), training=True)
    backbone = Backbone.load(spec, device=device, precision=precision)
    cb.stage(f"image features of {len(files)} files")
    source, images = load_features(
        backbone,
        files,
        settings.home,
        d,
        views=cfg.augment_views,
        cache=cfg.cache,
        workers=cfg.workers,
        batch_size=cfg.batch_size,
        progress=cb.progress,
    )
    if len(images.hashes) < 2:
        raise P2WError(f"{cfg.data} has {len(images.hashes)} readable image(s); training needs at least 2")
    train_rows, val_rows = split_rows(images.hashes, cfg.val_fraction, cfg.seed)
    local_batch, steps_per_epoch, total = _schedule(cfg, len(train_rows), d)
    mapper, stepper = _model(cfg, backbone, local_batch, d)
    warmup = cfg.warmup if cfg.warmup is not None else min(10000, total // 10)
    run = Run(
        cfg=cfg,
        name=name,
        backbone=backbone,
        source=source,
        train_rows=train_rows,
        val_rows=val_rows,
        mapper=mapper,
        stepper=stepper,
        d=d,
        local_batch=local_batch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup=warmup,
    )
    return run, images.skipped


def _schedule(cfg: TrainConfig, n_train: int, d: Dist) -> tuple[int, int, int]:
    """``(batch per process, steps per epoch, total steps)``: the batch shrinks to fit a small training set."""
    global_batch = min(cfg.batch_size * d.world, n_train - n_train % d.world)
    if global_batch < 2 * d.world:
        raise P2WError(f"only {n_train} training images for {d.world} process(es); add images")
    if global_batch < cfg.batch_size * d.world:
        log.warning("batch size lowered to %d: only %d training images", global_batch // d.world, n_train)
    steps_per_epoch = n_train // global_batch
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
    return global_batch // d.world, steps_per_epoch, total


def _model(cfg: TrainConfig, backbone: Backbone, local_batch: int, d: Dist) -> tuple[Mapper, TrainStep]:
    """A fresh mapper (seeded), wrapped for DDP on several processes, with its optimiser and step."""
    torch.manual_seed(cfg.seed)
    mapper = Mapper(backbone.embed_dim, backbone.token_width, cfg.hidden_dim, dropout=cfg.dropout)
    mapper = mapper.to(backbone.placement.device).train()
    model: nn.Module = mapper
    if d.world > 1:
        ids = [backbone.placement.device.index] if backbone.placement.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(mapper, device_ids=ids)
    torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout stream, per rank
    optimizer = adamw(mapper, cfg.lr, cfg.weight_decay)
    return mapper, TrainStep(backbone, mapper, model, optimizer, local_batch, d, graphs=cfg.cuda_graphs)


def _epoch_order(run: Run, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation of the training rows and each row's view for ``epoch``; the same on every rank."""
    g = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + epoch)
    order = run.train_rows[torch.randperm(len(run.train_rows), generator=g)]
    views = torch.randint(run.source.views_per_image, (len(run.train_rows),), generator=g)
    return order, views


def _loop(run: Run, checkpoint: Path, cb: Callbacks) -> None:
    with _sigint_flag() as interrupted:
        while run.step < run.total_steps:
            epoch = run.step // run.steps_per_epoch if run.steps_per_epoch else 0
            order, views = _epoch_order(run, epoch)
            losses: list[torch.Tensor] = []
            start, seen = time.perf_counter(), 0
            end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)
            while run.step < end:
                losses.append(_step(run, order, views, run.step - epoch * run.steps_per_epoch))
                seen += run.local_batch * run.d.world
                if run.step % REPORT_EVERY == 0 or run.step == end or interrupted.is_set():
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    lr = lr_at(run.step - 1, run.cfg.lr, run.warmup, run.total_steps)
                    cb.step(run.step, run.total_steps, float(losses[-1]), lr, rate)  # waits for the GPU
                if interrupted.is_set():
                    run.step_losses += torch.stack(losses).tolist()
                    save_checkpoint(run, checkpoint)
                    raise TrainingInterrupted(
                        f"interrupted at step {run.step}/{run.total_steps}; checkpoint saved to {checkpoint}; "
                        f"continue with: p2w train --name {run.name} --resume"
                    )
            values = torch.stack(losses).tolist() if losses else []
            run.step_losses += values
            summary = _epoch_summary(run, epoch, values, seen / max(time.perf_counter() - start, 1e-9))
            run.history.append(asdict(summary))
            save_checkpoint(run, checkpoint)
            cb.epoch(summary)


def _step(run: Run, order: torch.Tensor, views: torch.Tensor, index: int) -> torch.Tensor:
    """One step on this rank's share of global batch ``index`` of the epoch; returns the global loss (on device)."""
    lo = index * run.local_batch * run.d.world + run.d.rank * run.local_batch
    rows, view = order[lo : lo + run.local_batch], views[lo : lo + run.local_batch]
    feats = run.source.get(rows, view).to(run.backbone.placement.device)  # (batch, embed_dim)
    loss = run.stepper(feats, lr_at(run.step, run.cfg.lr, run.warmup, run.total_steps))
    run.step += 1
    return loss


def _epoch_summary(run: Run, epoch: int, losses: list[float], rate: float) -> EpochSummary:
    r1 = r5 = None
    if len(run.val_rows) >= 2:
        run.mapper.eval()
        r1, r5 = val_recall(run.backbone, run.mapper, run.source.get(run.val_rows, torch.zeros_like(run.val_rows)))
        run.mapper.train()
    return EpochSummary(epoch + 1, sum(losses) / max(1, len(losses)), rate, len(losses), r1, r5)


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """Turn Ctrl-C into a flag checked between steps, so a checkpoint is never taken mid-update."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
