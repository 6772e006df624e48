"""Device and precision choice: ``auto`` picks cuda > mps > cpu, and fp16 autocast only on CUDA; and how many
processes decode images by default (``default_workers``).

torch is imported inside the functions that use it, so that the CLI can build its ``--help`` from
``workers_help()`` without importing torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2w.errors import DeviceError

if TYPE_CHECKING:
    import torch

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
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)  # CUDA-graph safe


def mps_available() -> bool:
    """True when PyTorch can use Apple's Metal backend here."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda, else mps, else cpu; an explicit device must exist, e.g. ``resolve_device("cpu")``."""
    import torch

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
    import torch

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
    import torch

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
    import torch

    with torch.inference_mode(), place.autocast():
        yield


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (a container's cpuset), else
    ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _device_type(device: str | torch.device | None) -> str:
    """``"cpu"``, ``"cuda"``, ``"mps"``, ...; only ``"auto"``/None needs torch (to see whether a GPU is there)."""
    if device is not None and not isinstance(device, str):
        return str(device.type)
    spec = (device or "auto").strip().lower()
    if spec == "auto":
        return resolve_device("auto").type
    return spec.split(":", 1)[0]


def default_workers(device: str | torch.device | None = "auto", cpus: int | None = None) -> int:
    """Image-decoding processes (DataLoader workers) used when none are given, for the device the model runs on.

    The rule, with ``n = available_cpus()`` (or ``cpus``):

    - CUDA or MPS: ``min(8, n - 1)``, at least 1. The model runs on the accelerator, so decoding is what bounds the
      rate: as many decoders as cores, one core left to the main process (batching, copies, SQLite), 8 at most.
    - CPU: ``n // 4`` (0 on 1-3 cores: decode in the main process). The model's intra-op threads already use every
      core, and a decoder process pre-empts one of them; decoding costs a few percent of the model's CPU time,
      so about one decoder per four cores.

    Only ``"auto"``/None imports torch (to see whether CUDA is there); a device name or a ``torch.device`` does not.
    Measured in docs/performance.md ("Indexing a photo folder").
    """
    n = available_cpus() if cpus is None else max(1, cpus)
    if _device_type(device) in ("cuda", "mps"):
        return max(1, min(8, n - 1))
    return n // 4


def workers_help(cpus: int | None = None) -> str:
    """Help text of the ``--workers`` options, with this machine's defaults; imports no torch, e.g.
    ``"image decoding processes [default: 0 here on CPU, 1 on CUDA]"``."""
    return (
        "image decoding processes "
        f"[default: {default_workers('cpu', cpus)} here on CPU, {default_workers('cuda', cpus)} on CUDA]"
    )
