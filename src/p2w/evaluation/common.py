"""What every benchmark shares: cached image features, query encoding, and the result record."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2w.core.compose import FUSIONS, MAPPED, MODES, WEIGHED, QueryPlan, alpha_for, fill, prompt_ids
from p2w.core.features import FeatureCache, Views, fill_cache, hash_files
from p2w.core.fusion import fuse
from p2w.engine import Engine
from p2w.errors import P2WError, PromptError
from p2w.mappers.choice import query_template
from p2w.progress import Progress


@dataclass
class EvalResult:
    """One benchmark run in one mode: metrics in percent, what was missing, and the top-50 predictions."""

    benchmark: str
    split: str
    mode: str
    backbone: str
    mapper: str | None
    metrics: dict[str, Any]
    missing: dict[str, int]
    predictions: dict[str, list[list[str]]] = field(default_factory=dict)
    alpha: float | None = None  # the text side's weight of a weighed mode (compose.WEIGHED)

    @property
    def label(self) -> str:
        """The mode as a table row names it: ``pic2word``, ``slerp a=0.8``."""
        return self.mode if self.alpha is None else f"{self.mode} a={self.alpha:g}"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (predictions go to ``--save-predictions`` instead)."""
        out = {
            "benchmark": self.benchmark,
            "split": self.split,
            "mode": self.mode,
            "backbone": self.backbone,
            "mapper": self.mapper,
            "metrics": self.metrics,
            "missing": self.missing,
        }
        return out if self.alpha is None else {**out, "alpha": self.alpha}


SWEEP = tuple(round(0.05 * i, 2) for i in range(21))  # --alpha-sweep: 0, 0.05, ..., 1
# image preprocessing of the benchmark images: the backbone's own, or SEARLE's target padding (ratio 1.25) first
PREPROCESS = {"clip": 0.0, "targetpad": 1.25}


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def read_json(path: Path) -> Any:
    """A benchmark annotation file, or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise P2WError(f"annotation file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise P2WError(f"cannot read annotation file {path}: {exc}") from exc


def image_features(
    engine: Engine,
    paths: Sequence[Path | None],
    home: Path,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    preprocess: str = "clip",
) -> dict[str, np.ndarray]:
    """Unnormalised features of the readable images among ``paths``, cached per backbone and file content;
    ``preprocess="targetpad"``: SEARLE's padding before the backbone's own transform (its published protocol)."""
    if preprocess not in PREPROCESS:
        raise P2WError(f"unknown --preprocess {preprocess!r}; use {' or '.join(PREPROCESS)}")
    views = Views(0, pad=PREPROCESS[preprocess])
    present = sorted({p for p in paths if p is not None and p.is_file()})
    cache = FeatureCache.for_backbone(home, engine.backbone.id)
    try:
        images = hash_files(present, cache, workers)
        fill_cache(engine.backbone, images, views, cache, batch_size, workers, progress)
        have = cache.get([(h, 0) for h in images.hashes], views.kind)
    finally:
        cache.close()
    return {str(p): have[(h, 0)] for p, h in zip(images.paths, images.hashes, strict=True) if (h, 0) in have}


def image_vectors(
    engine: Engine,
    paths: Mapping[str, Path | None],
    home: Path,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    preprocess: str = "clip",
) -> dict[str, np.ndarray]:
    """Unnormalised features ``(dim,)`` of the named images that could be read (``image_features``), by name."""
    feats = image_features(engine, list(paths.values()), home, workers, batch_size, progress, preprocess)
    return {n: feats[str(p)] for n, p in paths.items() if p is not None and str(p) in feats}


def query_vectors(
    engine: Engine,
    qp: QueryPlan,
    image: np.ndarray | None,
    texts: Sequence[str | None],
    batch_size: int = 256,
    text: np.ndarray | None = None,
) -> np.ndarray:
    """Unit query vectors ``(n, dim)`` of plan ``qp`` from reference image features ``(n, dim)`` and texts; a fusion
    may be given its text features ``(n, dim)`` (``text_features``) already computed, e.g. for a sweep of alpha."""
    if text is not None and image is not None and qp.mode in FUSIONS and qp.alpha is not None:
        return l2n(fuse(qp.mode, qp.alpha, torch.from_numpy(image), torch.from_numpy(text)).numpy())
    prompts = [fill(qp.template, t, qp.mode) if qp.mode != "image" else "" for t in texts]
    out = []
    for i in range(0, len(texts), batch_size):
        feats = None if image is None else torch.from_numpy(np.ascontiguousarray(image[i : i + batch_size]))
        out.append(engine.compose(qp, feats, prompts[i : i + batch_size]).float().cpu().numpy())
    return l2n(np.concatenate(out)) if out else np.zeros((0, engine.backbone.embed_dim), dtype=np.float32)


def text_features(engine: Engine, prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unnormalised text features ``(n, dim)`` float32 of filled ``prompts`` (as ``Engine.compose`` encodes them)."""
    bb = engine.backbone
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            ids = prompt_ids(bb, prompts[i : i + batch_size], need_star=False)
            out.append(bb.encode_text(ids).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, bb.embed_dim), dtype=np.float32)


def template_for(engine: Engine, benchmark: str, mode: str, default: str, prompt: str | None = None) -> str:
    """The template a benchmark's queries use in ``mode``: the benchmark's own ``default`` in the baselines' modes;
    in pic2word mode the library's choice (``p2w.mappers.choice.query_template``: ``--prompt`` when given, else the
    one the mapper's method is evaluated with on this benchmark, else ``default``)."""
    if mode not in MAPPED:
        return default
    return query_template(engine.method, prompt, benchmark, default)


def check_missing(what: str, missing: dict[str, int], strict: bool) -> None:
    """With ``--strict``, any missing image or query is an error."""
    if strict and any(missing.values()):
        raise P2WError(f"{what}: missing images or queries {missing} (--strict)")


def unit_rows(vectors: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Stacked unit vectors ``(n, dim)`` (an empty ``(0, dim)`` array for none)."""
    return l2n(np.stack(vectors)) if len(vectors) else np.zeros((0, dim), dtype=np.float32)


def percent(fractions: Mapping[str, float]) -> dict[str, float]:
    """Metrics as the papers print them: ``{"R@1": 0.25}`` -> ``{"R@1": 25.0}``."""
    return {k: 100 * v for k, v in fractions.items()}


def in_order(ok: Sequence[int], tops: Sequence[list[str]], n: int) -> list[list[str]]:
    """Predictions in annotation order: the ranked names of evaluated queries, ``[]`` for those left out."""
    by_query = dict(zip(ok, tops, strict=True))
    return [by_query.get(i, []) for i in range(n)]


def modes_of(
    mode: str, alpha: float | None = None, sweep: bool = False, backbone: str = ""
) -> list[tuple[str, float | None]]:
    """The (mode, alpha) pairs ``--mode`` asks for: ``all`` -> every mode; else the one named. A fusion mode runs at
    ``alpha`` (None: ``compose.default_alpha`` of ``backbone``), or at every alpha of ``SWEEP`` with ``sweep``."""
    if mode != "all" and mode not in MODES:
        raise P2WError(f"unknown mode {mode!r}; use one of {', '.join(MODES)} or all")
    modes = list(MODES) if mode == "all" else [mode]
    if (alpha is not None or sweep) and not set(modes) & set(WEIGHED):
        raise P2WError(f"--alpha and --alpha-sweep weigh the text of modes {', '.join(WEIGHED)}, not of {mode}")
    if sweep and alpha is not None:
        raise P2WError("give --alpha or --alpha-sweep, not both")
    try:
        alphas = {md: SWEEP if sweep else (alpha_for(md, alpha, backbone),) for md in modes if md in WEIGHED}
    except PromptError as exc:
        raise P2WError(str(exc)) from exc
    return [(md, a) for md in modes for a in alphas.get(md, (None,))]
