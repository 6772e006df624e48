"""One optimisation step of Pic2Word training, the reference's optimiser and learning-rate schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from p2w.core.backbone import Backbone
from p2w.core.compose import TRAIN_PROMPT, prompt_ids
from p2w.errors import summary
from p2w.mappers.network import TokenMapper
from p2w.training.distributed import Dist, global_loss

log = logging.getLogger(__name__)


def adamw(mapper: TokenMapper, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The reference's optimiser: AdamW(betas 0.9/0.98, eps 1e-6), no decay on biases; fused on CUDA."""
    fused = next(mapper.parameters()).is_cuda
    return torch.optim.AdamW(_param_groups(mapper, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def _param_groups(mapper: TokenMapper, weight_decay: float) -> list[dict[str, Any]]:
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


class TrainStep:
    """mapper -> text tower on "a photo of *" -> loss over the global batch -> AdamW, for a fixed batch size.

    The token ids, their trimmed length and positions are prepared once; on CUDA the text tower's forward and
    backward are captured as CUDA graphs (the step is otherwise bound by kernel launches: ~1000 per step).
    """

    def __init__(
        self,
        backbone: Backbone,
        mapper: TokenMapper,
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
            log.warning("CUDA graph capture failed, training without it: %s", summary(exc))

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
