"""The benchmarks p2w evaluates, by name: where each one's code lives, its defaults, the options it takes, and how
to get its data. ``p2w eval`` and any other caller look benchmarks up here; nothing dispatches on a name elsewhere.

Each benchmark module has ``check_layout(data)`` (cheap, no model) and ``evaluate(engine, data, home, mode=, split=,
strict=, workers=, batch_size=, **options) -> list[EvalResult]``; modules are imported only when used (torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from p2w.errors import P2WError
from p2w.micro.world import DEFAULT_DATA, INSTALL_HINT
from p2w.spec import BUILTIN_MODELS

if TYPE_CHECKING:
    from p2w.engine import Engine
    from p2w.evaluation.common import EvalResult


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its module, the options of ``evaluate`` beyond the common ones, and its defaults."""

    name: str
    module: str  # p2w.evaluation.<module>
    options: tuple[str, ...] = ()  # benchmark-specific keyword arguments of evaluate()
    split: str = "val"
    data: Path | None = None  # a default folder (the micro world's Fashion-MNIST); None: --data is required
    model: str | None = None  # a default backbone (the embedded micro model); None: the user's default
    get_data: str = "download it as its authors publish it"  # how to get the folder, for the error message
    extra: Mapping[str, str] = field(default_factory=dict)  # option -> what it is for (messages, docs)

    def load(self) -> ModuleType:
        """The benchmark's module (imports torch)."""
        return importlib.import_module(f"p2w.evaluation.{self.module}")

    def folder(self, data: Path | None) -> Path:
        """The benchmark folder to read (``data`` or the default), checked for existence and layout before any
        mapper is looked for or model loaded; errors say how to get the data."""
        folder = data if data is not None else self.data
        if folder is None:
            raise P2WError(f"{self.name} needs --data DIR, the benchmark's folder in its published layout")
        if not folder.is_dir():
            raise P2WError(f"benchmark folder not found: {folder}; {self.get_data}")
        self.load().check_layout(folder)
        return folder

    def own_options(self, **options: Any) -> dict[str, Any]:
        """The options given (None means not given) that this benchmark takes; one it does not take is an error,
        raised before any file is read or model loaded."""
        foreign = sorted(k for k, v in options.items() if k not in self.options and v is not None)
        if foreign:
            raise P2WError(f"{self.name} takes no {', '.join('--' + k.replace('_', '-') for k in foreign)}")
        return {k: v for k, v in options.items() if v is not None}

    def evaluate(
        self, engine: Engine, data: Path, home: Path, split: str | None = None, **kwargs: Any
    ) -> list[EvalResult]:
        """Run it: ``kwargs`` are the common options (mode, alpha, alpha_sweep, strict, workers, batch_size,
        progress) and this benchmark's own (``own_options``)."""
        common = {"mode", "alpha", "alpha_sweep", "strict", "workers", "batch_size", "progress"}
        own = self.own_options(**{k: v for k, v in kwargs.items() if k not in common})
        return list(
            self.load().evaluate(
                engine, data, home, split=split or self.split, **own, **{k: v for k, v in kwargs.items() if k in common}
            )
        )


BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark(
            "fashioniq",
            "fashioniq",
            ("categories", "caption_order", "prompt", "preprocess"),
            get_data="get the annotations from github.com/XiaoxiaoGuo/fashion-iq and the images as its README says",
        ),
        Benchmark(
            "cirr",
            "cirr",
            ("submission", "prompt", "preprocess"),
            get_data="get the annotations from github.com/Cuberick-Orion/CIRR and the NLVR2 images",
        ),
        Benchmark("imagenet-r", "imagenet_r", get_data="get ImageNet-R and ImageNet val (see docs/evaluation.md)"),
        Benchmark(
            "circo",
            "circo",
            ("submission", "gallery", "query_style", "prompt", "preprocess"),
            get_data="get the annotations from github.com/miccunifi/CIRCO and the COCO 2017 unlabeled images",
        ),
        Benchmark("coco", "coco", get_data="get COCO val2017 images and instances_val2017.json from cocodataset.org"),
        Benchmark(
            "micro-fashion",
            "micro_fashion",
            split="test",
            data=DEFAULT_DATA,
            model=BUILTIN_MODELS[0],
            get_data=f"{INSTALL_HINT} holding its four files",
        ),
    ]
}


def benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, e.g. ``benchmark("cirr")``; an unknown name lists the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise P2WError(f"unknown benchmark {name!r}; use {', '.join(BENCHMARKS)}") from None
