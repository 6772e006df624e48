"""Mapper files: p2w saves safetensors with metadata naming the backbone they were made for; plain state dicts and
the reference training code's checkpoints (``state_dict_img2text``, maybe ``module.``-prefixed) are read too."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from p2w.atomic import atomic_path
from p2w.core.checkpoints import read_state_dict, tensors_of
from p2w.errors import MapperError, ModelLoadError, summary
from p2w.mappers.methods import Method, method, method_of
from p2w.mappers.network import Mapper, TokenMapper, from_state_dict
from p2w.mappers.registry import MAPPER_FORMAT, free_name
from p2w.version import version

log = logging.getLogger(__name__)


FORMAT_VERSION = "1"


@dataclass
class MapperFile:
    """A loaded mapper and what its file says about it."""

    mapper: TokenMapper
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def backbone(self) -> str | None:
        """Backbone id the mapper was made for, when the file records one."""
        return self.metadata.get("backbone") or None

    @property
    def method(self) -> Method:
        """The method the mapper belongs to (its default prompt, its provenance)."""
        return method_of(self.metadata, self.mapper.network)


# where each method's training code keeps the mapper in its checkpoints: Pic2Word's reference, SEARLE's and LinCIR's
CHECKPOINT_KEYS = ("state_dict_img2text", "Phi")


def read_mapper(path: Path) -> MapperFile:
    """Read a p2w safetensors file, a plain state dict, or a checkpoint of the Pic2Word reference
    (``state_dict_img2text``), SEARLE or LinCIR (``Phi``)."""
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
            state = tensors_of(obj, path, key=CHECKPOINT_KEYS)
    except ModelLoadError as exc:
        raise MapperError(str(exc)) from exc
    except Exception as exc:  # unpickling refusals and corrupt files
        raise MapperError(f"cannot read mapper {path} (weights_only=True): {summary(exc)}") from exc
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
    check_dims(mf.mapper, f"mapper {mf.path.name}", backbone_id, embed_dim, token_width)
    if mf.backbone and mf.backbone != backbone_id and not force:
        raise MapperError(
            f"mapper {mf.path.name} was made for backbone {mf.backbone}, not {backbone_id}; "
            "pass the matching --model/--pretrained, or --force-mapper to use it anyway"
        )


def check_dims(mapper: TokenMapper, label: str, backbone_id: str, embed_dim: int, token_width: int) -> None:
    """Refuse a mapper (a file's, or an object given to ``p2w.load``) whose widths differ from the backbone's."""
    if (mapper.embed_dim, mapper.token_width) != (embed_dim, token_width):
        raise MapperError(
            f"{label} maps {mapper.embed_dim}-d image features to {mapper.token_width}-d tokens, but backbone "
            f"{backbone_id} has {embed_dim}-d features and {token_width}-d tokens; use a mapper made for it"
        )


def save_mapper(mapper: TokenMapper, path: Path, backbone: str, extra: dict[str, str] | None = None) -> None:
    """Write atomically (temp file + rename) as safetensors with metadata (format, backbone, network, method, dims,
    p2w version); ``extra`` adds entries. ``method``: Pic2Word's for its network unless given; a phi's must be given
    (SEARLE's and LinCIR's networks look alike: a file that named the wrong one would carry the wrong provenance)."""
    from safetensors.torch import save_file

    method_name = (extra or {}).get("method") or ("pic2word" if isinstance(mapper, Mapper) else None)
    if method_name is None:
        raise MapperError("a phi mapper is saved with its method: extra={'method': 'searle' or 'lincir'}")
    method(method_name)  # a known one
    metadata = {
        "format": MAPPER_FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "embed_dim": str(mapper.embed_dim),
        "hidden_dim": str(mapper.hidden_dim),
        "token_width": str(mapper.token_width),
        "network": mapper.network,
        "method": method_name,
        **({"n_layer": str(mapper.n_layer)} if isinstance(mapper, Mapper) else {}),
        "p2w_version": version(),
        **(extra or {}),
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in mapper.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def import_mapper(
    source: Path,
    name: str,
    mappers_dir: Path,
    backbone: str,
    dims: tuple[int, int] | None,
    overwrite: bool = False,
    extra: dict[str, str] | None = None,
    method_name: str | None = None,
) -> Path:
    """Convert any readable mapper file into ``mappers_dir/NAME.safetensors`` recording ``backbone`` and its method
    (``method_name``, else what the file records; a phi needs one: SEARLE's and LinCIR's files look alike)."""
    target = free_name(mappers_dir, name, overwrite)
    mf = read_mapper(source)
    chosen = method(method_name) if method_name else mf.method
    if chosen.network != mf.mapper.network:
        raise MapperError(f"{source} holds a {mf.mapper.network} network, not {chosen.name}'s ({chosen.network})")
    if dims is not None:
        check_fits(mf, backbone, *dims, force=True)
    meta = {"source": source.name, **(extra or {}), "method": chosen.name}
    save_mapper(mf.mapper, target, backbone, extra=meta)
    log.info("imported %s as %s (%s)", source, name, backbone)
    return target
