"""The state of a training run that the loop advances and checkpoints save."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from p2w.core.backbone import Backbone
from p2w.mappers.network import TokenMapper
from p2w.training.caption_set import CaptionSet
from p2w.training.caption_step import CaptionStep
from p2w.training.config import TrainConfig
from p2w.training.distributed import Dist
from p2w.training.schedule import Cursor
from p2w.training.step import TrainStep
from p2w.training.trainset import FeatureSource


@dataclass
class Run:
    """Everything a training loop works with; built with keywords (``Run(cfg=..., name=..., ...)``).

    ``source``/``images`` (the image features and their batches) are None without ``--data``, ``captions`` and
    ``caption_batches`` None without ``--captions``; ``cfg`` has every default filled in (``with_defaults``)."""

    cfg: TrainConfig
    name: str
    backbone: Backbone
    source: FeatureSource | None
    train_rows: torch.Tensor
    val_rows: torch.Tensor
    mapper: TokenMapper
    stepper: TrainStep | CaptionStep
    d: Dist
    images: Cursor | None
    captions: CaptionSet | None
    caption_batches: Cursor | None
    steps_per_epoch: int
    round_steps: int
    total_steps: int
    warmup: int
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
