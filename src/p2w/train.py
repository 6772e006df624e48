"""``p2w train``: fit a Pic2Word mapper on unlabeled images with CLIP frozen, as the paper does, but without
recomputing what cannot change: image features come from a cache, and the text tower runs over ~6 positions."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from p2w.atomic import atomic_path
from p2w.backbone import Backbone
from p2w.compose import TRAIN_PROMPT, prompt_ids
from p2w.data import list_images
from p2w.distributed import Dist, global_loss
from p2w.errors import P2WError, TrainingInterrupted
from p2w.mapper import NAME_RE, Mapper, save_mapper
from p2w.settings import Settings
from p2w.trainset import FeatureSource, load_features, split_rows, val_recall
from p2w.weights import BackboneSpec

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "p2w-train-checkpoint-1"
REPORT_EVERY = 10  # steps between progress reports (each one waits for the GPU)
# fields that define a run: a resumed run must match them
RUN_FIELDS = (
    "data",
    "model",
    "pretrained",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "hidden_dim",
    "dropout",
    "val_fraction",
    "augment_views",
    "seed",
    "max_steps",
)


@dataclass(frozen=True)
class TrainConfig:
    """Options of a run; defaults are the reference's (AdamW 0.9/0.98/1e-6, wd 0.1 but biases, lr 1e-4, batch 128)."""

    data: str
    name: str | None = None
    model: str | None = None
    pretrained: str | None = None
    device: str | None = None
    precision: str = "auto"  # on CUDA: bf16 autocast where supported, else fp16 with loss scaling
    epochs: int = 10
    batch_size: int = 128  # per process
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: int | None = None  # steps; None: 10% of the run, at most 10000 (the reference's default)
    hidden_dim: int = 512
    dropout: float = 0.1
    val_fraction: float = 0.02
    augment_views: int = 1  # 0: no augmentation; K: K cached random crops per image
    seed: int = 0
    workers: int = 4
    cache: bool = True  # False: encode images at every step, as the reference does
    cuda_graphs: bool = True  # capture the text tower's forward/backward on CUDA
    max_steps: int | None = None
    resume: bool = False
    force: bool = False


@dataclass
class EpochSummary:
    """What one epoch did."""

    epoch: int
    loss: float
    samples_per_s: float
    steps: int
    val_recall_at_1: float | None = None
    val_recall_at_5: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"epoch", "loss", "val_recall@1", "val_recall@5", "samples_per_s", "steps"}``."""
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "val_recall@1": self.val_recall_at_1,
            "val_recall@5": self.val_recall_at_5,
            "samples_per_s": self.samples_per_s,
            "steps": self.steps,
        }


@dataclass
class TrainResult:
    """The registered mapper and the run's history."""

    name: str
    mapper_path: Path
    backbone: str
    samples: int
    skipped: list[tuple[str, str]]
    epochs: list[EpochSummary] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    main_process: bool = True  # False on torchrun ranks other than 0, which should print nothing

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "name": self.name,
            "mapper_path": str(self.mapper_path),
            "backbone": self.backbone,
            "samples": self.samples,
            "skipped": len(self.skipped),
            "epochs": [e.to_json() for e in self.epochs],
        }


class Callbacks(Protocol):
    """Progress reports; every method is optional to implement (see ``NoCallbacks``)."""

    def stage(self, text: str) -> None: ...
    def features(self, done: int, total: int) -> None: ...
    def step(self, step: int, total: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def epoch(self, summary: EpochSummary) -> None: ...


class NoCallbacks:
    """Reports nothing."""

    def stage(self, text: str) -> None:
        """Ignore."""

    def features(self, done: int, total: int) -> None:
        """Ignore."""

    def step(self, step: int, total: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Ignore."""

    def epoch(self, summary: EpochSummary) -> None:
        """Ignore."""


@dataclass
class _Run:
    """Everything a training loop works with."""

    cfg: TrainConfig
    name: str
    backbone: Backbone
    source: FeatureSource
    train_rows: torch.Tensor
    val_rows: torch.Tensor
    mapper: Mapper
    stepper: TrainStep
    d: Dist
    local_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


def train(cfg: TrainConfig, settings: Settings | None = None, callbacks: Callbacks | None = None) -> TrainResult:
    """Train a mapper and register it as ``P2W_HOME/mappers/NAME.safetensors``; see ``TrainConfig``."""
    settings = settings or Settings.from_env()
    name = cfg.name or datetime.now(timezone.utc).strftime("mapper-%Y%m%d-%H%M%S")
    paths = _paths(settings, name)
    _check_start(cfg, name, paths)
    if cfg.resume:
        cfg = _resumed_config(cfg, _read_checkpoint(paths["checkpoint"]))
    spec = settings.backbone(cfg.model, cfg.pretrained)
    cfg = replace(cfg, model=spec.model, pretrained=spec.pretrained)
    d = Dist.from_env(cfg.device)
    cb = (callbacks or NoCallbacks()) if d.is_main else NoCallbacks()
    try:
        run, skipped = _prepare(cfg, name, settings, d, cb)
        if cfg.resume:
            _load_checkpoint(run, paths["checkpoint"])
        _loop(run, paths["checkpoint"], cb)
        mapper_path = paths["mapper"]
        if d.is_main:
            save_mapper(
                run.mapper,
                mapper_path,
                run.backbone.id,
                extra={"trained_on": Path(cfg.data).name, "steps": str(run.step), "samples": str(len(run.train_rows))},
            )
        d.barrier()
        epochs = [EpochSummary(**h) for h in run.history]
        return TrainResult(
            name, mapper_path, run.backbone.id, len(run.train_rows), skipped, epochs, run.step_losses, d.is_main
        )
    finally:
        d.close()


def _paths(settings: Settings, name: str) -> dict[str, Path]:
    return {
        "checkpoint": settings.home / "runs" / name / "checkpoint.pt",
        "mapper": settings.mappers_dir / f"{name}.safetensors",
    }


def _check_start(cfg: TrainConfig, name: str, paths: dict[str, Path]) -> None:
    """Refuse, before any work, what would lose or clobber the user's files."""
    if not NAME_RE.match(name):
        raise P2WError(f"invalid name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    if cfg.resume and not paths["checkpoint"].is_file():
        raise P2WError(f"no checkpoint to resume for {name!r} ({paths['checkpoint']}); start it without --resume")
    if not cfg.resume and not cfg.force:
        if paths["mapper"].exists():
            raise P2WError(
                f"a mapper named {name!r} exists already ({paths['mapper']}); pick another --name or --force"
            )
        if paths["checkpoint"].exists():
            raise P2WError(
                f"a run named {name!r} exists ({paths['checkpoint']}); continue it with --resume, or --force"
            )
    if cfg.batch_size < 2 and cfg.max_steps != 0:
        raise P2WError("--batch-size must be at least 2: the loss contrasts each image with the others")


def _prepare(cfg: TrainConfig, name: str, settings: Settings, d: Dist, cb: Callbacks) -> tuple[_Run, list]:
    files = list_images(Path(cfg.data).expanduser())
    precision = _train_precision(cfg.precision, d.device(cfg.device))
    cb.stage(f"loading {Path(str(cfg.model)).name} with weights {Path(str(cfg.pretrained)).name}")
    backbone = Backbone.load(
        BackboneSpec(str(cfg.model), cfg.pretrained), device=d.device(cfg.device), precision=precision
    )
    cb.stage(f"image features of {len(files)} files")
    source, images = load_features(backbone, files, cfg, settings.home, d, cb.features)
    if len(images.hashes) < 2:
        raise P2WError(f"{cfg.data} has {len(images.hashes)} readable image(s); training needs at least 2")
    train_rows, val_rows = split_rows(images.hashes, cfg.val_fraction, cfg.seed)
    global_batch = min(cfg.batch_size * d.world, len(train_rows) - len(train_rows) % d.world)
    if global_batch < 2 * d.world:
        raise P2WError(f"only {len(train_rows)} training images for {d.world} process(es); add images")
    if global_batch < cfg.batch_size * d.world:
        log.warning("batch size lowered to %d: only %d training images", global_batch // d.world, len(train_rows))
    steps_per_epoch = len(train_rows) // global_batch
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
    torch.manual_seed(cfg.seed)
    mapper = Mapper(backbone.embed_dim, backbone.token_width, cfg.hidden_dim, dropout=cfg.dropout)
    mapper = mapper.to(backbone.placement.device).train()
    model: nn.Module = mapper
    if d.world > 1:
        ids = [backbone.placement.device.index] if backbone.placement.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(mapper, device_ids=ids)
    torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout stream, per rank
    optimizer = adamw(mapper, cfg.lr, cfg.weight_decay)
    stepper = TrainStep(backbone, mapper, model, optimizer, global_batch // d.world, d, graphs=cfg.cuda_graphs)
    warmup = cfg.warmup if cfg.warmup is not None else min(10000, total // 10)
    run = _Run(
        cfg,
        name,
        backbone,
        source,
        train_rows,
        val_rows,
        mapper,
        stepper,
        d,
        global_batch // d.world,
        steps_per_epoch,
        total,
        warmup,
    )
    return run, images.skipped


def _train_precision(precision: str, device: str | None) -> str:
    from p2w.devices import resolve_device

    if precision != "auto":
        return precision
    dev = resolve_device(device)
    if dev.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def adamw(mapper: Mapper, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The reference's optimiser: AdamW(betas 0.9/0.98, eps 1e-6), no decay on biases; fused on CUDA."""
    fused = next(mapper.parameters()).is_cuda
    return torch.optim.AdamW(_param_groups(mapper, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def _param_groups(mapper: Mapper, weight_decay: float) -> list[dict[str, Any]]:
    """The reference's groups: no weight decay on biases (and norms, which the mapper has none of)."""
    decay = [p for n, p in mapper.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in mapper.named_parameters() if n.endswith("bias")]
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """The reference's schedule: linear warm-up to ``base_lr``, then cosine to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def _epoch_order(run: _Run, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation of the training rows and each row's view for ``epoch``; the same on every rank."""
    g = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + epoch)
    order = run.train_rows[torch.randperm(len(run.train_rows), generator=g)]
    views = torch.randint(run.source.views_per_image, (len(run.train_rows),), generator=g)
    return order, views


def _loop(run: _Run, checkpoint: Path, cb: Callbacks) -> None:
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
                    _save_checkpoint(run, checkpoint)
                    raise TrainingInterrupted(
                        f"interrupted at step {run.step}/{run.total_steps}; checkpoint saved to {checkpoint}; "
                        f"continue with: p2w train --name {run.name} --resume"
                    )
            values = torch.stack(losses).tolist() if losses else []
            run.step_losses += values
            summary = _epoch_summary(run, epoch, values, seen / max(time.perf_counter() - start, 1e-9))
            run.history.append(asdict(summary))
            _save_checkpoint(run, checkpoint)
            cb.epoch(summary)


def _step(run: _Run, order: torch.Tensor, views: torch.Tensor, index: int) -> torch.Tensor:
    """One step on this rank's share of global batch ``index`` of the epoch; returns the global loss (on device)."""
    lo = index * run.local_batch * run.d.world + run.d.rank * run.local_batch
    rows, view = order[lo : lo + run.local_batch], views[lo : lo + run.local_batch]
    feats = run.source.get(rows, view).to(run.backbone.placement.device)  # (batch, embed_dim)
    loss = run.stepper(feats, lr_at(run.step, run.cfg.lr, run.warmup, run.total_steps))
    run.step += 1
    return loss


class TrainStep:
    """mapper -> text tower on "a photo of *" -> loss over the global batch -> AdamW, for a fixed batch size.

    The token ids, their trimmed length and positions are prepared once; on CUDA the text tower's forward and
    backward are captured as CUDA graphs (the step is otherwise bound by kernel launches: ~1000 per step).
    """

    def __init__(
        self,
        backbone: Backbone,
        mapper: Mapper,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: int,
        d: Dist,
        graphs: bool = True,
    ) -> None:
        self.backbone, self.mapper, self.model, self.optimizer, self.d = backbone, mapper, model, optimizer, d
        ids = prompt_ids(backbone, [TRAIN_PROMPT], need_star=True).expand(batch, -1)
        # the graph reads these tensors by address at every replay: keep them alive as long as the step
        self.plan = backbone.text_plan(ids, with_star=True)
        self.eager: Callable[..., Any] = lambda tokens: backbone.encode_planned(self.plan, tokens)
        self.encode: Callable[..., Any] = self.eager
        self.graphed = False
        if graphs and backbone.placement.device.type == "cuda":
            self._capture(batch)
        self.scaler = torch.amp.GradScaler(
            backbone.placement.device.type, enabled=backbone.placement.precision == "fp16"
        )

    def _capture(self, batch: int) -> None:
        device = self.backbone.placement.device
        sample = torch.randn(batch, self.backbone.token_width, device=device, requires_grad=True)
        try:
            self.encode = torch.cuda.make_graphed_callables(self.encode, (sample,))
            self.graphed = True
        except Exception as exc:  # capture can fail on unusual models or drivers; eager still works
            log.warning("CUDA graph capture failed, training without it: %s", str(exc).splitlines()[0])

    def __call__(self, feats: torch.Tensor, lr: float) -> torch.Tensor:
        """One step on image features ``(batch, embed_dim)`` at learning rate ``lr``; returns the loss (no sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tokens = self.model(feats)  # (batch, token_width)
        parts = global_loss(feats, self.encode(tokens), self.backbone.logit_scale, self.d)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts.loss * self.d.world).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts.loss.detach()


def _epoch_summary(run: _Run, epoch: int, losses: list[float], rate: float) -> EpochSummary:
    r1 = r5 = None
    if len(run.val_rows) >= 2:
        run.mapper.eval()
        r1, r5 = val_recall(run.backbone, run.mapper, run.source.get(run.val_rows, torch.zeros_like(run.val_rows)))
        run.mapper.train()
    return EpochSummary(epoch + 1, sum(losses) / max(1, len(losses)), rate, len(losses), r1, r5)


def _save_checkpoint(run: _Run, path: Path) -> None:
    """Write the run's state atomically (rank 0 only); loads back with ``weights_only=True``."""
    if not run.d.is_main:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": run.step,
        "config": {k: getattr(run.cfg, k) for k in RUN_FIELDS},
        "backbone": run.backbone.id,
        "mapper": run.mapper.state_dict(),
        "optimizer": run.stepper.optimizer.state_dict(),
        "scaler": run.stepper.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": run.history,
        "step_losses": run.step_losses,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many types
        raise P2WError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise P2WError(f"{path} is not a p2w training checkpoint")
    return state


def _resumed_config(cfg: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    """The first run's options for every field left at its default; a field set to another value is an error."""
    defaults, stored = TrainConfig(data=""), state["config"]
    changed = [
        f"{k} ({stored[k]!r} -> {getattr(cfg, k)!r})"
        for k in RUN_FIELDS
        if getattr(cfg, k) != getattr(defaults, k) and getattr(cfg, k) != stored[k]
    ]
    if changed:
        raise P2WError(f"--resume continues a run with its own options; changed: {', '.join(changed)}")
    return replace(cfg, **{k: stored[k] for k in RUN_FIELDS})


def _load_checkpoint(run: _Run, path: Path) -> None:
    state = _read_checkpoint(path)
    if state["backbone"] != run.backbone.id:
        raise P2WError(f"the checkpoint was made with backbone {state['backbone']}, not {run.backbone.id}")
    run.mapper.load_state_dict(state["mapper"])
    run.stepper.optimizer.load_state_dict(state["optimizer"])
    run.stepper.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    run.step, run.history, run.step_losses = state["step"], list(state["history"]), list(state["step_losses"])


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
