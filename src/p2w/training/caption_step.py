"""One optimisation step with LinCIR's caption objective, alone or together with Pic2Word's image objective.

The mapper runs once per step on every input of the step (the noised caption features, then the image features,
concatenated), so a DDP-wrapped mapper sees one forward per backward. The caption loss is a mean over the local
batch: DDP's gradient average makes it the global batch's mean, so it is backpropagated as it is; the image loss is
the contrastive loss over the global batch (``global_loss``), backpropagated times the world size as in
``TrainStep``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from p2w.core.backbone import Backbone
from p2w.mappers.network import TokenMapper
from p2w.training.caption_set import CaptionBatch
from p2w.training.distributed import Dist, global_loss, rank_mean
from p2w.training.objective import caption_noise, lincir_loss
from p2w.training.step import grad_scaler, photo_encoder


class CaptionStep:
    """phi(t + noise) at every ``*`` of the replaced caption -> MSE to ``t`` [+ Pic2Word's loss] -> AdamW.

    ``image_batch``: the per-process batch of image features when the run trains both objectives (their
    "a photo of *" forward and backward are CUDA graphs on a GPU, as in ``TrainStep``); None for captions alone.
    """

    def __init__(
        self,
        backbone: Backbone,
        mapper: TokenMapper,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        d: Dist,
        noise: float = 1.0,
        image_batch: int | None = None,
        graphs: bool = True,
    ) -> None:
        self.backbone, self.mapper, self.model, self.optimizer, self.d = backbone, mapper, model, optimizer, d
        self.noise = noise
        self.photo: Callable[..., Any] | None = None
        self.graphed = False
        if image_batch is not None:
            self.photo, self.graphed = photo_encoder(backbone, image_batch, graphs)
        self.scaler = grad_scaler(backbone)

    def __call__(
        self, lr: float, captions: CaptionBatch | None = None, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step at learning rate ``lr`` on a caption batch, image features ``(batch, embed_dim)``, or both
        (the losses summed); returns the loss, the sum of the two (no host sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inputs = ([caption_noise(captions.t, self.noise)] if captions is not None else []) + (
            [images] if images is not None else []
        )
        tokens = self.model(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
        total = torch.zeros((), device=tokens.device)
        reported = torch.zeros((), device=tokens.device)
        if captions is not None:
            n = captions.t.shape[0]
            loss = lincir_loss(self.backbone, self.mapper, captions.t, captions.plan, tokens=tokens[:n])
            total, reported, tokens = total + loss, reported + rank_mean(loss.detach(), self.d), tokens[n:]
        if images is not None:
            assert self.photo is not None, "CaptionStep made without image_batch"
            parts = global_loss(images, self.photo(tokens), self.backbone.logit_scale, self.d)
            total, reported = total + parts.loss * self.d.world, reported + parts.loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return reported
