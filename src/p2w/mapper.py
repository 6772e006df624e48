"""Pic2Word's mapping network (the reference's IM2TEXT) and its files.

p2w saves mappers as safetensors with metadata naming the backbone they were trained for; plain state dicts and
the reference training code's checkpoints (``state_dict_img2text``, maybe ``module.``-prefixed) are read too.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from p2w.atomic import atomic_path
from p2w.errors import MapperError, ModelLoadError
from p2w.weights import read_state_dict, tensors_of

log = logging.getLogger(__name__)

FORMAT = "p2w-mapper"
FORMAT_VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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


@dataclass
class MapperFile:
    """A loaded mapper and what its file says about it."""

    mapper: Mapper
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def backbone(self) -> str | None:
        """Backbone id the mapper was made for, when the file records one."""
        return self.metadata.get("backbone") or None


def from_state_dict(state: dict[str, torch.Tensor], source: Path) -> Mapper:
    """Build a mapper whose shape is read from the reference-layout state dict itself."""
    n_layer = sum(1 for k in state if re.fullmatch(r"layers\.\d+\.0\.weight", k))
    try:
        first, out = state["layers.0.0.weight"], state["fc_out.weight"]
    except KeyError as exc:
        raise MapperError(f"{source} is not a Pic2Word mapper: no {exc.args[0]} tensor") from None
    mapper = Mapper(embed_dim=first.shape[1], token_width=out.shape[0], hidden_dim=out.shape[1], n_layer=n_layer)
    try:
        mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise MapperError(f"{source} is not a Pic2Word mapper: {str(exc).splitlines()[0]}") from None
    return mapper.eval()


def read_mapper(path: Path) -> MapperFile:
    """Read a p2w safetensors file, a plain state dict, or a reference checkpoint (``state_dict_img2text``)."""
    if not path.is_file():
        raise MapperError(f"mapper file not found: {path}")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            state = read_state_dict(path)
        else:
            obj = _load_checkpoint(path)
            state = tensors_of(obj, path, key="state_dict_img2text")
    except ModelLoadError as exc:
        raise MapperError(str(exc)) from None
    except Exception as exc:  # unpickling refusals and corrupt files
        raise MapperError(
            f"cannot read mapper {path} (weights_only=True): {str(exc).strip().splitlines()[0]}"
        ) from None
    return MapperFile(from_state_dict(state, path), path, metadata)


def _load_checkpoint(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; memory-mapped where the format allows (a 1.7 GB checkpoint whose
    mapper is a few MB need not be read into memory whole)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def check_fits(mf: MapperFile, backbone_id: str, embed_dim: int, token_width: int, force: bool = False) -> None:
    """Refuse a mapper whose dims differ from the backbone's, or (unless ``force``) made for another backbone."""
    m = mf.mapper
    if (m.embed_dim, m.token_width) != (embed_dim, token_width):
        raise MapperError(
            f"mapper {mf.path.name} maps {m.embed_dim}-d image features to {m.token_width}-d tokens, but backbone "
            f"{backbone_id} has {embed_dim}-d features and {token_width}-d tokens; use a mapper made for it"
        )
    if mf.backbone and mf.backbone != backbone_id and not force:
        raise MapperError(
            f"mapper {mf.path.name} was made for backbone {mf.backbone}, not {backbone_id}; "
            "pass the matching --model/--pretrained, or --force-mapper to use it anyway"
        )


def save_mapper(mapper: Mapper, path: Path, backbone: str, extra: dict[str, str] | None = None) -> None:
    """Write atomically (temp file + rename) as safetensors with metadata (format, backbone, dims, p2w version)."""
    from safetensors.torch import save_file

    from p2w import __version__

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "embed_dim": str(mapper.embed_dim),
        "hidden_dim": str(mapper.hidden_dim),
        "token_width": str(mapper.token_width),
        "n_layer": str(mapper.n_layer),
        "p2w_version": __version__,
        **(extra or {}),
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in mapper.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def mapper_path(name_or_path: str, mappers_dir: Path) -> Path:
    """A registered name -> ``mappers_dir/NAME.safetensors``; anything that exists or looks like a path -> itself."""
    path = Path(name_or_path).expanduser()
    if path.exists() or os.sep in name_or_path or path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return path
    registered = mappers_dir / f"{name_or_path}.safetensors"
    if not registered.is_file():
        from p2w.mappers import builtin_mappers

        shipped = builtin_mappers().get(name_or_path)
        if shipped is not None:
            return shipped
        known = sorted(p.stem for p in mappers_dir.glob("*.safetensors")) if mappers_dir.is_dir() else []
        listing = f"registered: {', '.join(known)}" if known else f"none are registered in {mappers_dir}"
        raise MapperError(
            f"no mapper named {name_or_path!r} ({listing}); import one with: p2w mapper import FILE --name NAME"
        )
    return registered


def import_mapper(
    source: Path,
    name: str,
    mappers_dir: Path,
    backbone: str,
    dims: tuple[int, int] | None,
    overwrite: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """Convert any readable mapper file into ``mappers_dir/NAME.safetensors`` recording ``backbone``."""
    if not NAME_RE.match(name):
        raise MapperError(f"invalid mapper name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    target = mappers_dir / f"{name}.safetensors"
    if target.exists() and not overwrite:
        raise MapperError(f"a mapper named {name!r} exists already ({target}); pick another --name or pass --force")
    mf = read_mapper(source)
    if dims is not None:
        check_fits(mf, backbone, *dims, force=True)
    save_mapper(mf.mapper, target, backbone, extra={"source": source.name, **(extra or {})})
    log.info("imported %s as %s (%s)", source, name, backbone)
    return target
