"""p2w: composed image retrieval with Pic2Word on open_clip. Importing it does not import torch.

Example::

    import p2w
    engine = p2w.load(model="ViT-L-14", pretrained="openai", mapper="my-mapper")
    vector = engine.encode_query("shirt.jpg", "with a red logo")  # (768,) float32, unit norm
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2w.errors import (
    DeviceError,
    ImageError,
    MapperError,
    ModelLoadError,
    ModelUnavailableError,
    P2WError,
    PromptError,
    TrainingInterrupted,
)
from p2w.settings import Settings

if TYPE_CHECKING:
    from p2w.engine import Engine


__all__ = [
    "DeviceError",
    "Engine",
    "ImageError",
    "MapperError",
    "ModelLoadError",
    "ModelUnavailableError",
    "P2WError",
    "PromptError",
    "Settings",
    "TrainingInterrupted",
    "__version__",
    "load",
]


def load(*args: Any, **kwargs: Any) -> Engine:
    """Load an engine; see ``p2w.engine.load`` for the arguments."""
    from p2w.engine import load as _load

    return _load(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use (p2w.version says why)
        from p2w.version import version

        return version()
    if name == "Engine":
        from p2w.engine import Engine

        return Engine
    raise AttributeError(f"module 'p2w' has no attribute {name!r}")
