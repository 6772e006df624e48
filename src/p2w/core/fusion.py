"""The training-free fusions of a query image's embedding with its modifier text's, weighed by ``alpha`` (the text's
weight: 0 gives the image's direction, 1 the text's), written from the authors' formulas:

- ``slerp`` (Jang et al., ECCV 2024): spherical linear interpolation between the unit image and text vectors,
  ``sin((1 - a) t) / sin t * v_img + sin(a t) / sin t * v_txt`` with ``t`` the angle between them (a normalised
  linear interpolation where they are nearly parallel, ``|cos t| > 0.9995``, as the authors' code does).
- ``weighted`` (WeiMoCIR, Wu et al. 2024): ``(1 - a) * image + a * text`` of the *unnormalised* embeddings (the
  authors normalise only the result), so each side weighs by its norm too.

``pic2word-slerp`` (p2w's own) is ``slerp`` with the pic2word composed vector in place of the words' embedding.

A query with several images: ``slerp`` starts from the direction of their unit vectors' sum (as ``image`` and
``average`` read several images); ``weighted`` from the mean of their embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARALLEL = 0.9995  # |cos| above which slerp is a normalised linear interpolation (the authors' threshold)


def fuse(mode: str, alpha: float, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Query features ``(batch, dim)`` float32 of ``mode`` from unnormalised image features ``(batch, dim)`` (or
    ``(batch, k, dim)``) and text features ``(batch, dim)``; ``slerp``'s are unit, ``weighted``'s its sum before
    the normalisation."""
    image, text = image.float(), text.float()
    if mode in ("slerp", "pic2word-slerp"):
        unit = F.normalize(image, dim=-1)
        start = F.normalize(unit.sum(dim=1), dim=-1) if image.dim() == 3 else unit
        return slerp(start, F.normalize(text, dim=-1), alpha)
    if mode == "weighted":
        start = image.mean(dim=1) if image.dim() == 3 else image
        return (1.0 - alpha) * start + alpha * text
    raise ValueError(f"not a fusion mode: {mode!r}")


def slerp(v0: torch.Tensor, v1: torch.Tensor, alpha: float) -> torch.Tensor:
    """The unit vectors ``alpha`` of the way from unit ``v0`` to unit ``v1`` along the great circle ``(batch, dim)``."""
    cos = (v0 * v1).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin = torch.sin(theta).clamp_min(1e-12)
    arc = (torch.sin((1.0 - alpha) * theta) * v0 + torch.sin(alpha * theta) * v1) / sin
    line = (1.0 - alpha) * v0 + alpha * v1
    return F.normalize(torch.where(cos.abs() > PARALLEL, line, arc), dim=-1)
