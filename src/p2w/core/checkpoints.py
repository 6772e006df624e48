"""Reading weights files without running code: safetensors, or torch files with ``weights_only=True``; TorchScript
archives are refused."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2w.errors import ModelLoadError, ModelUnavailableError, summary

if TYPE_CHECKING:
    import torch


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI CLIP checkpoints only


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch file loaded with ``weights_only=True`` (never pickle code)."""
    import torch

    kind = _sniff(path)
    if kind == "torchscript":
        raise ModelLoadError(
            f"{path} is a TorchScript archive (OpenAI's original CLIP format), which can carry code and is not "
            "loaded; use the open_clip tag (--pretrained openai) or save torch.jit.load(FILE).state_dict() "
            "as safetensors once"
        )
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = summary(exc)
        raise ModelLoadError(f"{path} holds more than tensors and is refused (weights_only=True): {first}") from exc
    except Exception as exc:  # corrupt files raise a variety of errors
        raise ModelLoadError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    return tensors_of(obj, path)


def tensors_of(obj: Any, path: Path, key: str | tuple[str, ...] = "state_dict") -> dict[str, torch.Tensor]:
    """The tensor entries of a checkpoint object (``obj[key]``, the first of several keys present, when there is one),
    ``module.`` prefix removed."""
    import torch

    for k in (key,) if isinstance(key, str) else key:
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _sniff(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot open weights file {path}: {exc.strerror or exc}") from exc
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") for n in zf.namelist()):
                return "torchscript"
    return "torch"
