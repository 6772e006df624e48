"""The mapping networks: image (or text) features -> a pseudo-word token. ``Mapper`` is Pic2Word's (the reference's
IM2TEXT); ``Phi`` is the network SEARLE and LinCIR share (3 linear layers with GELU and dropout; their keys)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
from torch import nn

from p2w.errors import MapperError, summary


class Mapper(nn.Module):
    """Linear(d,h)-Dropout-ReLU, (n_layer-1) x [Linear(h,h)-Dropout-ReLU], Linear(h,w); keys match the reference."""

    network = "pic2word"

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


class Phi(nn.Module):
    """SEARLE's and LinCIR's phi: Linear(d,h)-GELU-Dropout-Linear(h,h)-GELU-Dropout-Linear(h,w), keys
    ``layers.{0,3,6}.{weight,bias}``; their published models use h = 4d and dropout 0.5. No normalisation inside:
    both methods feed it unnormalised features."""

    network = "phi"

    def __init__(self, embed_dim: int, token_width: int, hidden_dim: int | None = None, dropout: float = 0.5):
        super().__init__()
        hidden = hidden_dim or 4 * embed_dim
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, token_width),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised features ``(..., embed_dim)`` -> pseudo-word tokens ``(..., token_width)``."""
        return self.layers(features)

    @property
    def embed_dim(self) -> int:
        """Input width: the backbone's feature width."""
        return int(self._linear(0).in_features)

    @property
    def token_width(self) -> int:
        """Output width: the backbone's token embedding width."""
        return int(self._linear(6).out_features)

    @property
    def hidden_dim(self) -> int:
        """Width of the hidden layers."""
        return int(self._linear(0).out_features)

    def _linear(self, i: int) -> nn.Linear:
        layer = self.layers[i]
        assert isinstance(layer, nn.Linear)
        return layer


TokenMapper = Mapper | Phi  # what an engine or a training run maps features with


def network_of(state: dict[str, torch.Tensor]) -> str | None:
    """Which network a state dict belongs to, from its keys: ``"pic2word"``, ``"phi"``, or None."""
    if "layers.0.0.weight" in state and "fc_out.weight" in state:
        return "pic2word"
    if {"layers.0.weight", "layers.3.weight", "layers.6.weight"} <= set(state):
        return "phi"
    return None


def from_state_dict(state: dict[str, torch.Tensor], source: Path) -> TokenMapper:
    """Build the mapper (Pic2Word's or phi) whose kind and shape are read from the state dict itself."""
    network = network_of(state)
    if network == "phi":
        first, last = state["layers.0.weight"], state["layers.6.weight"]
        mapper: TokenMapper = Phi(first.shape[1], last.shape[0], hidden_dim=first.shape[0])
        return _load(mapper, state, source)
    return _pic2word(state, source)


def _load(mapper: TokenMapper, state: dict[str, torch.Tensor], source: Path) -> TokenMapper:
    try:
        mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise MapperError(f"{source} is not a {mapper.network} mapper: {summary(exc)}") from exc
    return mapper.eval()


def _pic2word(state: dict[str, torch.Tensor], source: Path) -> TokenMapper:
    n_layer = sum(1 for k in state if re.fullmatch(r"layers\.\d+\.0\.weight", k))
    try:
        first, out = state["layers.0.0.weight"], state["fc_out.weight"]
    except KeyError as exc:
        raise MapperError(
            f"{source} is not a Pic2Word mapper (nor a SEARLE/LinCIR phi): no {exc.args[0]} tensor"
        ) from exc
    mapper = Mapper(embed_dim=first.shape[1], token_width=out.shape[0], hidden_dim=out.shape[1], n_layer=n_layer)
    return _load(mapper, state, source)
