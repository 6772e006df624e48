"""``p2w train``: fit a mapper with CLIP frozen, on unlabeled images (Pic2Word's objective), on captions (LinCIR's)
or on both, as the papers do, but without recomputing what cannot change: image features and the captions' own
text features come from a cache, and the text tower runs over the prompt's real length (6 positions for
"a photo of *", a caption's own length for LinCIR's replaced captions)."""

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

from p2w.errors import P2WError, TrainingInterrupted
from p2w.mappers.files import save_mapper
from p2w.settings import Settings
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
from p2w.training.distributed import Dist
from p2w.training.prepare import prepare
from p2w.training.schedule import parts_at
from p2w.training.state import Run
from p2w.training.step import TrainStep, lr_at
from p2w.training.trainset import val_recall

log = logging.getLogger(__name__)


REPORT_EVERY = 10  # steps between progress reports (each one waits for the GPU)


def train(cfg: TrainConfig, settings: Settings | None = None, callbacks: Callbacks | None = None) -> TrainResult:
    """Train a mapper and register it as ``P2W_HOME/mappers/NAME.safetensors``; see ``TrainConfig``."""
    settings = settings or Settings.from_env()
    d = Dist.from_env(cfg.device)
    try:
        return _train(cfg, settings, (callbacks or NoCallbacks()) if d.is_main else NoCallbacks(), d)
    finally:
        d.close()


def _train(cfg: TrainConfig, settings: Settings, cb: Callbacks, d: Dist) -> TrainResult:
    # the default name is rank 0's clock: ranks starting on either side of a second would name two runs
    name = cfg.name or d.broadcast(datetime.now(timezone.utc).strftime("mapper-%Y%m%d-%H%M%S"))
    paths = RunPaths.of(settings, name)
    check_start(cfg, name, paths)
    if cfg.resume:
        cfg = resumed_config(cfg, read_checkpoint(paths.checkpoint))
    if not cfg.has_images and not cfg.captions:  # a resumed run's checkpoint without any (check_start asks a new one)
        raise P2WError("nothing to train on: give --data (images) and/or --captions (a caption file)")
    spec = settings.backbone(cfg.model, cfg.pretrained)
    cfg = replace(cfg.with_defaults(), model=spec.model, pretrained=spec.pretrained)
    run, skipped = prepare(cfg, name, spec, settings, d, cb)
    if cfg.resume:
        restore_checkpoint(run, paths.checkpoint)
    _loop(run, paths.checkpoint, cb)
    if d.is_main:
        save_mapper(run.mapper, paths.mapper, run.backbone.id, extra=_metadata(run))
    d.barrier()
    n_captions = len(run.captions) if run.captions is not None else 0
    return TrainResult(
        name=name,
        mapper_path=paths.mapper,
        backbone=run.backbone.id,
        samples=len(run.train_rows) + n_captions,
        skipped=skipped,
        epochs=[EpochSummary(**h) for h in run.history],
        step_losses=run.step_losses,
        main_process=d.is_main,
        objective=cfg.objective,
        images=len(run.train_rows),
        captions=n_captions,
        keywords=run.captions.rule if run.captions is not None else None,
    )


def _metadata(run: Run) -> dict[str, str]:
    """What the mapper file records of the run: the method decides the prompt a query uses by default (LinCIR's
    for anything trained on captions, Pic2Word's for images alone), the objective says what it was trained on."""
    cfg = run.cfg
    trained_on = [Path(p).name for p in (cfg.data, cfg.embeddings, cfg.captions) if p]
    extra = {
        "trained_on": " + ".join(trained_on),
        "steps": str(run.step),
        "samples": str(len(run.train_rows) + (len(run.captions) if run.captions is not None else 0)),
        "method": "pic2word" if cfg.objective == "pic2word" else "lincir",
        "objective": cfg.objective,
    }
    if run.captions is not None:
        extra |= {"keywords": run.captions.rule, "captions": str(len(run.captions)), "noise": str(cfg.noise)}
    if cfg.objective == "mixed":
        extra["mix"] = cfg.mix
    return extra


def _loop(run: Run, checkpoint: Path, cb: Callbacks) -> None:
    """Rounds of steps (an epoch, see ``schedule.round_steps``), each ending with a summary and a checkpoint.

    Ctrl-C sets a flag; the ranks agree on it at every report (``Dist.any``: one rank's Ctrl-C stops them all at the
    same step), alone at every step."""
    if run.step < run.total_steps:
        cb.stage(_plan(run))
    estimate = _Estimate(run, cb)
    with _sigint_flag() as interrupted:
        while run.step < run.total_steps:
            end = min((run.step // run.round_steps + 1) * run.round_steps, run.total_steps)
            losses: list[torch.Tensor] = []
            start, seen = time.perf_counter(), 0
            while run.step < end:
                loss, samples = _step(run)
                losses.append(loss)
                seen += samples
                report = run.step % REPORT_EVERY == 0 or run.step == end
                if report:
                    _report(run, cb, losses, seen / max(time.perf_counter() - start, 1e-9))  # waits
                    estimate.at_report()
                if _stop_here(run, interrupted, report):
                    if not report:
                        _report(run, cb, losses, seen / max(time.perf_counter() - start, 1e-9))
                    _interrupt(run, losses, checkpoint)
            values = torch.stack(losses).tolist() if losses else []
            run.step_losses += values
            summary = _epoch_summary(
                run, -(-end // run.steps_per_epoch), values, seen / max(time.perf_counter() - start, 1e-9)
            )
            run.history.append(asdict(summary))
            save_checkpoint(run, checkpoint)
            cb.epoch(summary)


def _report(run: Run, cb: Callbacks, losses: list[torch.Tensor], rate: float) -> None:
    cb.step(run.step, run.total_steps, float(losses[-1]), _lr(run, run.step - 1), rate)


def _stop_here(run: Run, interrupted: threading.Event, report: bool) -> bool:
    """Whether the run stops after this step: Ctrl-C on any rank, agreed on at reports (every step when alone)."""
    if run.d.world > 1 and not report:
        return False
    return run.d.any(interrupted.is_set())


def _interrupt(run: Run, losses: list[torch.Tensor], checkpoint: Path) -> None:
    """Save the checkpoint (rank 0) and stop every rank at the same step, once the file is written."""
    run.step_losses += torch.stack(losses).tolist()
    save_checkpoint(run, checkpoint)
    run.d.barrier()  # torchrun stops the others when one rank exits: not before the checkpoint is written
    raise TrainingInterrupted(
        f"interrupted at step {run.step}/{run.total_steps}; checkpoint saved to {checkpoint}; "
        f"continue with: p2w train --name {run.name} --resume"
    )


def _plan(run: Run) -> str:
    """What the run will do, e.g. ``training 1,000 steps: 83.3 epochs of 3,200 captions, 256 a step``."""
    cursor = run.caption_batches or run.images
    assert cursor is not None
    what = f"{len(run.captions):,} captions" if run.captions is not None else f"{len(run.train_rows):,} images"
    if run.captions is not None and run.images is not None:
        what += f" (and {len(run.train_rows):,} images)"
    epochs = f"{run.total_steps / run.steps_per_epoch:.3g}"
    line = f"training {run.total_steps:,} steps: {epochs} epochs of {what}, {cursor.local_batch * run.d.world:,} a step"
    return line + (f"; resuming at step {run.step:,}" if run.step else "")


class _Estimate:
    """Says once how long the rest of the run takes, at the rate measured between its first two reports (the first
    steps pay for warming up: memory, CUDA graph capture)."""

    def __init__(self, run: Run, cb: Callbacks) -> None:
        self.run, self.cb = run, cb
        self.first: tuple[int, float] | None = None
        self.said = False

    def at_report(self) -> None:
        if self.said:
            return
        now, step = time.perf_counter(), self.run.step
        if self.first is None or step <= self.first[0]:
            self.first = (step, now)
            return
        per_step = (now - self.first[1]) / (step - self.first[0])
        left = self.run.total_steps - step
        if left > 0:
            self.cb.stage(
                f"about {_duration(left * per_step)} left: {left:,} more steps at {per_step:.3g} s a step "
                f"(measured over steps {self.first[0]:,}-{step:,})"
            )
        self.said = True


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _lr(run: Run, step: int) -> float:
    return lr_at(step, run.cfg.lr, run.warmup, run.total_steps, str(run.cfg.schedule))


def _step(run: Run) -> tuple[torch.Tensor, int]:
    """One step (this rank's share of the global batches it trains on); returns the global loss (on the device)
    and the samples the step trained on over all ranks."""
    image_k, caption_k = parts_at(run.step, run.cfg.objective, run.cfg.mix)
    feats, captions, samples = None, None, 0
    if image_k is not None:
        assert run.images is not None and run.source is not None
        rows, view = run.images.at(image_k)
        feats = run.source.get(rows, view).to(run.backbone.placement.device)  # (batch, embed_dim)
        samples += len(rows) * run.d.world
    if caption_k is not None:
        assert run.caption_batches is not None and run.captions is not None
        rows = run.caption_batches.at(caption_k)[0]
        captions = run.captions.batch(run.backbone, rows)
        samples += len(rows) * run.d.world
    lr = _lr(run, run.step)
    if isinstance(run.stepper, TrainStep):
        assert feats is not None
        loss = run.stepper(feats, lr)
    else:
        loss = run.stepper(lr, captions=captions, images=feats)
    run.step += 1
    return loss, samples


def _epoch_summary(run: Run, epoch: int, losses: list[float], rate: float) -> EpochSummary:
    r1 = r5 = None
    if run.source is not None and len(run.val_rows) >= 2:
        run.mapper.eval()
        r1, r5 = val_recall(run.backbone, run.mapper, run.source.get(run.val_rows, torch.zeros_like(run.val_rows)))
        run.mapper.train()
    return EpochSummary(epoch, sum(losses) / max(1, len(losses)), rate, len(losses), r1, r5)


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
