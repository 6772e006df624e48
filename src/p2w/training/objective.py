"""Pic2Word's training objective: "a photo of *" with the mapped image must match the image itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from p2w.core.backbone import Backbone
from p2w.core.compose import TRAIN_PROMPT, prompt_ids
from p2w.mappers.network import TokenMapper


@dataclass
class LossParts:
    """The loss and what it was made of (``logits_per_image`` ``(batch, batch)``)."""

    loss: torch.Tensor
    loss_img: torch.Tensor
    loss_txt: torch.Tensor
    logits_per_image: torch.Tensor
    text_features: torch.Tensor  # (batch, embed_dim), unnormalised


LossFn = Callable[[torch.Tensor, torch.Tensor, float], LossParts]


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> LossParts:
    """CLIP's symmetric cross-entropy on L2-normalised features; row i of each matches row i of the other."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    loss_img = F.cross_entropy(logits, target)
    loss_txt = F.cross_entropy(logits.T, target)
    return LossParts((loss_img + loss_txt) / 2, loss_img, loss_txt, logits, text_features)


def photo_of_star_features(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """Text features ``(batch, embed_dim)`` of "a photo of *" with ``tokens`` ``(batch, token_width)`` at ``*``."""
    ids = prompt_ids(backbone, [TRAIN_PROMPT], need_star=True).expand(tokens.shape[0], -1)
    return backbone.encode_text(ids, tokens)


def pic2word_loss(
    backbone: Backbone,
    mapper: TokenMapper,
    image_features: torch.Tensor,
    tokens: torch.Tensor | None = None,
    loss_fn: LossFn = contrastive_loss,
) -> LossParts:
    """Loss of one batch of (frozen, unnormalised) image features ``(batch, embed_dim)``; gradients reach the mapper.

    ``tokens`` defaults to ``mapper(image_features)`` (pass them when the mapper is wrapped, e.g. by DDP). Equal to
    the reference trainer's loss, which inserts the token before ``<eot>`` of "a photo of": the same sequence as
    "a photo of *" with ``*`` replaced.
    """
    tokens = mapper(image_features) if tokens is None else tokens
    return loss_fn(image_features, photo_of_star_features(backbone, tokens), backbone.logit_scale)
