"""Device and precision choice: ``auto`` picks cuda > mps > cpu, and fp16 autocast only on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from p2w.errors import DeviceError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs, e.g. ``Placement(torch.device("cuda"), "fp16")``."""

    device: torch.device
    precision: str  # "fp32", "fp16" or "bf16"; weights stay fp32, fp16/bf16 run under autocast

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast context for fp16/bf16 (LayerNorm and softmax stay fp32 inside it); a no-op for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)  # CUDA-graph safe


def mps_available() -> bool:
    """True when PyTorch can use Apple's Metal backend here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda, else mps, else cpu; an explicit device must exist, e.g. ``resolve_device("cpu")``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        _check_cuda(device)
    elif device.type == "mps" and not mps_available():
        raise DeviceError(
            "device mps was asked for, but this PyTorch build cannot use Apple Metal here; use --device cpu"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device type {device.type!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _check_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(
            "device cuda was asked for, but PyTorch sees no CUDA GPU here "
            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"device {device} was asked for, but only {count} CUDA device(s) exist (cuda:0..{count - 1})")


def resolve_precision(precision: str | None, device: torch.device, training: bool = False) -> str:
    """The one ``"auto"`` rule: fp32 off CUDA; on CUDA fp16 for inference, and for training bf16 where the GPU has it
    (no loss scaling needed), else fp16. Refuses combinations that are slow or unsupported."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU; use --precision fp32 (or bf16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return precision


def placement(device: str | None = "auto", precision: str | None = "auto") -> Placement:
    """Resolve both at once, e.g. ``placement("auto", "auto")``."""
    dev = resolve_device(device)
    return Placement(dev, resolve_precision(precision, dev))


@contextlib.contextmanager
def inference(place: Placement) -> Iterator[None]:
    """``torch.inference_mode`` plus the placement's autocast."""
    with torch.inference_mode(), place.autocast():
        yield
