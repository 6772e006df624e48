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


def lincir_adamw(mapper: TokenMapper, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """LinCIR's optimiser: AdamW with torch's betas 0.9/0.999 and eps 1e-8, decay on every parameter; fused on
    CUDA."""
    fused = next(mapper.parameters()).is_cuda
    return torch.optim.AdamW(mapper.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warm-up to ``base_lr``, then ``cosine`` to 0 at ``total`` (the Pic2Word reference's schedule) or
    ``constant`` (LinCIR's ``constant_with_warmup``)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def grad_scaler(backbone: Backbone) -> torch.amp.GradScaler:
    """Loss scaling, on for fp16 only."""
    return torch.amp.GradScaler(backbone.placement.device.type, enabled=backbone.placement.precision == "fp16")


def photo_encoder(backbone: Backbone, batch: int, graphs: bool = True) -> tuple[Callable[..., Any], bool]:
    """``tokens (batch, token_width) -> features`` of "a photo of *" for a fixed batch size, and whether its forward
    and backward are CUDA graphs (captured on CUDA when ``graphs``; eager where capture fails)."""
    ids = prompt_ids(backbone, [TRAIN_PROMPT], need_star=True).expand(batch, -1)
    plan = backbone.text_plan(ids, with_star=True)  # graph replays read its tensors: the closure keeps them alive

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        return backbone.encode_planned(plan, tokens)

    if not (graphs and backbone.placement.device.type == "cuda"):
        return encode, False
    sample = torch.randn(batch, backbone.token_width, device=backbone.placement.device, requires_grad=True)
    try:
        return torch.cuda.make_graphed_callables(encode, (sample,)), True
    except Exception as exc:  # capture can fail on unusual models or drivers; eager still works
        log.warning("CUDA graph capture failed, training without it: %s", summary(exc))
        return encode, False


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
        self.encode, self.graphed = photo_encoder(backbone, batch, graphs)
        self.scaler = grad_scaler(backbone)

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
