"""A training run's options, its files, and its results; the checks made before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from p2w.errors import P2WError
from p2w.mappers.registry import check_name, registry_file
from p2w.settings import Settings

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
    workers: int | None = None  # decoding processes; None: p2w.core.devices.default_workers of the device
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
    def progress(self, stage: str, done: int, total: int) -> None: ...
    def step(self, step: int, total: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def epoch(self, summary: EpochSummary) -> None: ...


class NoCallbacks:
    """Reports nothing."""

    def stage(self, text: str) -> None:
        """Ignore."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """Ignore."""

    def step(self, step: int, total: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Ignore."""

    def epoch(self, summary: EpochSummary) -> None:
        """Ignore."""


@dataclass(frozen=True)
class RunPaths:
    """The files of a run named ``name``: its checkpoint and the mapper it registers."""

    checkpoint: Path
    mapper: Path

    @classmethod
    def of(cls, settings: Settings, name: str) -> RunPaths:
        """``P2W_HOME/runs/NAME/checkpoint.pt`` and the registry's ``NAME.safetensors``."""
        return cls(settings.home / "runs" / name / "checkpoint.pt", registry_file(settings.mappers_dir, name))


def check_start(cfg: TrainConfig, name: str, paths: RunPaths) -> None:
    """Refuse, before any work, what would lose or clobber the user's files."""
    check_name(name, "name")
    if cfg.resume and not paths.checkpoint.is_file():
        raise P2WError(f"no checkpoint to resume for {name!r} ({paths.checkpoint}); start it without --resume")
    if not cfg.resume and not cfg.force:
        if paths.mapper.exists():
            raise P2WError(f"a mapper named {name!r} exists already ({paths.mapper}); pick another --name or --force")
        if paths.checkpoint.exists():
            raise P2WError(f"a run named {name!r} exists ({paths.checkpoint}); continue it with --resume, or --force")
    if cfg.batch_size < 2 and cfg.max_steps != 0:
        raise P2WError("--batch-size must be at least 2: the loss contrasts each image with the others")


def resumed_config(cfg: TrainConfig, state: dict[str, Any]) -> TrainConfig:
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
