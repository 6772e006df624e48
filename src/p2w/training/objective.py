"""The training objectives. Pic2Word's: "a photo of *" with the mapped image must match the image itself
(contrastive). LinCIR's: a caption with its keywords replaced by ``*`` and the pseudo-word of the caption's own
(noised) text feature at every ``*`` must give back that text feature (mean squared error)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from p2w.core.backbone import Backbone, TextPlan
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


def caption_noise(t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """LinCIR's input noise: ``t + scale * u * n``, ``u ~ U(0, 1)`` one scalar per row, ``n ~ N(0, I)``; added to
    the unnormalised feature (draws ``u`` then ``n`` from the default generator of ``t``'s device)."""
    u = torch.rand(t.shape[0], 1, device=t.device, dtype=t.dtype)
    return t + scale * u * torch.randn_like(t)


def lincir_loss(
    backbone: Backbone,
    mapper: TokenMapper,
    t: torch.Tensor,
    plan: TextPlan,
    noise: float = 1.0,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """LinCIR's loss of one batch: ``t`` ``(batch, embed_dim)`` the captions' own projected, unnormalised text
    features; ``plan`` the replaced captions (``backbone.text_plan(ids, with_star=True)``). The token
    ``mapper(caption_noise(t, noise))`` (or ``tokens``) goes to every ``*`` of its row; the loss is the mean over
    batch and dimensions of ``(text tower(replaced) - t) ** 2``, both unnormalised. Gradients reach the mapper."""
    tokens = mapper(caption_noise(t, noise)) if tokens is None else tokens
    return F.mse_loss(backbone.encode_planned(plan, tokens), t)
