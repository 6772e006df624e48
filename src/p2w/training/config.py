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
    "path_column",
    "embeddings",
    "captions",
    "network",
    "noise",
    "schedule",
    "mix",
    "keywords",
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
    """Options of a run. ``data`` (images: Pic2Word's objective), ``captions`` (a caption file: LinCIR's), or both.
    Options left at None take the objective's defaults (``with_defaults``): with ``data`` alone the Pic2Word
    reference's (AdamW 0.9/0.98/1e-6, wd 0.1 but biases, lr 1e-4, batch 128, 10 epochs, warm-up then cosine, its
    mapper, hidden 512, dropout 0.1); with ``captions`` LinCIR's (AdamW 0.9/0.999/1e-8, wd 0.01, lr 1e-4, batch 256,
    warm-up then constant, phi with hidden 4 x embed_dim, dropout 0.5, noise 1.0) for a length that fits the file:
    ``CAPTION_EPOCHS`` passes over the captions, at least ``MIN_CAPTION_STEPS`` and at most LinCIR's 50,000 steps
    (``schedule.caption_steps``), the warm-up 10% of that, at most LinCIR's 500 steps."""

    data: str = ""  # a folder, a list, webdataset shards (``p2w.training.data``)
    path_column: str | None = None  # a .csv/.tsv/.parquet list's path column; None: the first of the usual names
    captions: str | None = None
    embeddings: str | None = None  # a layout of `p2w embed dataset`: its vectors x norm instead of --data's images
    name: str | None = None
    model: str | None = None
    pretrained: str | None = None
    device: str | None = None
    precision: str = "auto"  # on CUDA: bf16 autocast where supported, else fp16 with loss scaling
    epochs: int | None = None
    batch_size: int | None = None  # per process
    lr: float = 1e-4
    weight_decay: float | None = None
    warmup: int | None = None  # steps; None: 10% of the run, at most 10000 (the reference's); with captions 500
    hidden_dim: int | None = None  # None: 512 for Pic2Word's mapper, 4 x embed_dim for phi
    dropout: float | None = None  # None: 0.1 for Pic2Word's mapper, 0.5 for phi
    network: str | None = None  # "pic2word" | "phi"; None: pic2word with data alone, phi with captions
    noise: float = 1.0  # LinCIR's noise scale: t + noise * U(0, 1) * N(0, I)
    schedule: str | None = None  # "cosine" | "constant" after the warm-up; None: the objective's
    mix: str = "alternate"  # data and captions: "alternate" (an objective a step) or "sum"; docs/performance.md
    keywords: str = "auto"  # "auto": spaCy's tagging when it loads, else p2w's stop-word rule; "rule": the rule
    val_fraction: float = 0.02
    augment_views: int = 1  # 0: no augmentation; K: K cached random crops per image
    seed: int = 0
    workers: int | None = None  # decoding processes; None: p2w.core.devices.default_workers of the device
    cache: bool = True  # False: encode images (and caption features) at every step, as the references do
    cuda_graphs: bool = True  # capture the text tower's forward/backward on CUDA
    max_steps: int | None = None  # None: the epochs decide; with captions ``schedule.caption_steps``
    resume: bool = False
    force: bool = False

    @property
    def objective(self) -> str:
        """``pic2word`` (images, or their embeddings), ``lincir`` (captions) or ``mixed`` (both)."""
        if self.captions and self.has_images:
            return "mixed"
        return "lincir" if self.captions else "pic2word"

    @property
    def has_images(self) -> bool:
        """Whether the run trains on images: ``data`` (decoded and encoded once) or ``embeddings`` (a layout)."""
        return bool(self.data or self.embeddings)

    def with_defaults(self) -> TrainConfig:
        """Every option left at None set to its objective's (and network's) default; with captions ``epochs``,
        ``max_steps`` and ``warmup`` may stay None: the run's length then follows from the caption file's size
        (``prepare``)."""
        pic2word = self.objective == "pic2word"
        network = self.network or ("pic2word" if pic2word else "phi")
        if network not in NETWORKS:
            raise P2WError(f"unknown network {network!r}; use one of {', '.join(NETWORKS)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise P2WError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.mix not in MIXES:
            raise P2WError(f"unknown mix {self.mix!r}; use one of {', '.join(MIXES)}")
        if self.keywords not in KEYWORDS:
            raise P2WError(f"unknown keyword rule {self.keywords!r}; use one of {', '.join(KEYWORDS)}")
        return replace(
            self,
            network=network,
            epochs=self.epochs if self.epochs is not None or not pic2word else 10,
            batch_size=self.batch_size or (128 if pic2word else 256),
            weight_decay=self.weight_decay if self.weight_decay is not None else (0.1 if pic2word else 0.01),
            hidden_dim=self.hidden_dim or (512 if network == "pic2word" else None),
            dropout=self.dropout if self.dropout is not None else (0.1 if network == "pic2word" else 0.5),
            schedule=self.schedule or ("cosine" if pic2word else "constant"),
        )


NETWORKS = ("pic2word", "phi")
SCHEDULES = ("cosine", "constant")
MIXES = ("alternate", "sum")
KEYWORDS = ("auto", "rule")
LINCIR_STEPS = 50_000  # LinCIR's default max_train_steps (of 256 captions: 3.9 passes over CC3M's 3.3M)
LINCIR_WARMUP = 500  # LinCIR's warm-up steps
CAPTION_EPOCHS = 4  # a run with captions passes over them this often by default (LinCIR's length at CC3M's size)
MIN_CAPTION_STEPS = 1000  # ... and takes at least this many steps (a small file: the micro world's 720 captions
# trained well in 200 steps of 256; docs/microworld.md)


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
    objective: str = "pic2word"  # "pic2word", "lincir" or "mixed"
    images: int = 0  # training images (``samples`` = images + captions)
    captions: int = 0  # training captions
    keywords: str | None = None  # the keyword rule that ran, with captions

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "name": self.name,
            "mapper_path": str(self.mapper_path),
            "backbone": self.backbone,
            "objective": self.objective,
            "samples": self.samples,
            "images": self.images,
            "captions": self.captions,
            "keywords": self.keywords,
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
    if not cfg.has_images and not cfg.captions and not cfg.resume:
        raise P2WError(
            "--data, --embeddings or --captions is required: an image folder, list file or CSV, a layout of "
            "p2w embed dataset, and/or a caption file (or --resume a run)"
        )
    if cfg.data and cfg.embeddings:
        raise P2WError("give the images one way: --data (files) or --embeddings (a layout of p2w embed dataset)")
    if cfg.resume and not paths.checkpoint.is_file():
        raise P2WError(f"no checkpoint to resume for {name!r} ({paths.checkpoint}); start it without --resume")
    if not cfg.resume and not cfg.force:
        if paths.mapper.exists():
            raise P2WError(f"a mapper named {name!r} exists already ({paths.mapper}); pick another --name or --force")
        if paths.checkpoint.exists():
            raise P2WError(f"a run named {name!r} exists ({paths.checkpoint}); continue it with --resume, or --force")
    if cfg.batch_size is not None and cfg.batch_size < 2 and cfg.max_steps != 0:
        raise P2WError("--batch-size must be at least 2: the loss contrasts each image with the others")


def resumed_config(cfg: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    """The first run's options for every field left at its default; a field set to another value is an error."""
    defaults = TrainConfig()
    stored = {k: state["config"].get(k, getattr(defaults, k)) for k in RUN_FIELDS}  # older runs lack newer fields
    changed = [
        f"{k} ({stored[k]!r} -> {getattr(cfg, k)!r})"
        for k in RUN_FIELDS
        if getattr(cfg, k) != getattr(defaults, k) and getattr(cfg, k) != stored[k]
    ]
    if changed:
        raise P2WError(f"--resume continues a run with its own options; changed: {', '.join(changed)}")
    return replace(cfg, **stored)
