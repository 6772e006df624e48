"""Pic2Word's mapping network (the reference's IM2TEXT): image features -> a pseudo-word token."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
from torch import nn

from p2w.errors import MapperError, summary


class Mapper(nn.Module):
    """Linear(d,h)-Dropout-ReLU, (n_layer-1) x [Linear(h,h)-Dropout-ReLU], Linear(h,w); keys match the reference."""

    def __init__(self, embed_dim: int, token_width: int, hidden_dim: int = 512, n_layer: int = 2, dropout: float = 0.1):
        super().__init__()
        dims = [embed_dim] + [hidden_dim] * n_layer
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b), nn.Dropout(dropout), nn.ReLU()) for a, b in itertools.pairwise(dims))
        )
        self.fc_out = nn.Linear(hidden_dim, token_width)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``(batch, embed_dim)`` -> pseudo-word tokens ``(batch, token_width)``."""
        return self.fc_out(self.layers(image_features))

    @property
    def embed_dim(self) -> int:
        """Input width: the backbone's image feature width."""
        first = self.layers[0]
        assert isinstance(first, nn.Sequential) and isinstance(first[0], nn.Linear)
        return int(first[0].in_features)

    @property
    def token_width(self) -> int:
        """Output width: the backbone's token embedding width."""
        return int(self.fc_out.out_features)

    @property
    def hidden_dim(self) -> int:
        """Width of the hidden layers."""
        return int(self.fc_out.in_features)

    @property
    def n_layer(self) -> int:
        """Number of Linear-Dropout-ReLU blocks before ``fc_out``."""
        return len(self.layers)


def from_state_dict(state: dict[str, torch.Tensor], source: Path) -> Mapper:
    """Build a mapper whose shape is read from the reference-layout state dict itself."""
    n_layer = sum(1 for k in state if re.fullmatch(r"layers\.\d+\.0\.weight", k))
    try:
        first, out = state["layers.0.0.weight"], state["fc_out.weight"]
    except KeyError as exc:
        raise MapperError(f"{source} is not a Pic2Word mapper: no {exc.args[0]} tensor") from exc
    mapper = Mapper(embed_dim=first.shape[1], token_width=out.shape[0], hidden_dim=out.shape[1], n_layer=n_layer)
    try:
        mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise MapperError(f"{source} is not a Pic2Word mapper: {summary(exc)}") from exc
    return mapper.eval()
