"""FashionIQ (Wu et al., CVPR 2021) in Pic2Word's protocol: per category, the gallery is the category's split
(the reference image is not removed); prompt ``a photo of * , {cap2} and {cap1}``; R@10 and R@50, and their average."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2w.core.compose import FUSIONS, MODES
from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.evaluation import metrics as m
from p2w.evaluation.common import EvalResult, Progress, check_missing, image_vectors, percent, read_json
from p2w.evaluation.driver import Query, QuerySet, Rules, query_set, run

CATEGORIES = ("dress", "shirt", "toptee")
TEMPLATE = "a photo of * , {text}"
FUSION_TEMPLATE = "{text}"  # the joined captions as written, as the Slerp and WeiMoCIR code encode them


def image_path(data: Path, asin: str) -> Path | None:
    """``images/<asin>.png`` or ``.jpg`` (both occur in the community copies), or None."""
    for suffix in (".png", ".jpg", ".jpeg"):
        path = data / "images" / f"{asin}{suffix}"
        if path.is_file():
            return path
    return None


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` is not a FashionIQ folder."""
    if not (data / "captions").is_dir() or not (data / "image_splits").is_dir():
        raise P2WError(f"{data} is not a FashionIQ folder: it needs captions/cap.{{c}}.val.json and image_splits/")


def evaluate(
    engine: Engine,
    data: Path,
    home: Path,
    mode: str = "pic2word",
    alpha: float | None = None,
    alpha_sweep: bool = False,
    split: str = "val",
    categories: Sequence[str] | None = None,
    caption_order: str = "pic2word",
    strict: bool = False,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    prompt: str | None = None,
    preprocess: str = "clip",
) -> list[EvalResult]:
    """One ``EvalResult`` per mode, metrics grouped by category plus ``average``."""
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise P2WError(f"unknown FashionIQ category {unknown[0]!r}; use {', '.join(CATEGORIES)}")
    if caption_order not in ("pic2word", "both"):
        raise P2WError("--caption-order is pic2word (cap2 and cap1, as Pic2Word) or both (the two orders averaged)")
    annotations = {
        c: (
            read_json(data / "captions" / f"cap.{c}.{split}.json"),
            read_json(data / "image_splits" / f"split.{c}.{split}.json"),
        )
        for c in categories
    }
    wanted = {a for caps, gallery in annotations.values() for a in [*gallery, *(q["candidate"] for q in caps)]}
    paths = {a: image_path(data, a) for a in sorted(wanted)}
    images = image_vectors(engine, paths, home, workers, batch_size, progress, preprocess)
    templates = dict.fromkeys(MODES, TEMPLATE) | dict.fromkeys(FUSIONS, FUSION_TEMPLATE)
    sets = []
    for c, (caps, gallery) in annotations.items():
        queries = [_query(q, caption_order) for q in caps]
        sets.append(query_set(c, templates, images, gallery, queries, engine.backbone.embed_dim, f"{c}_"))
        check_missing(f"FashionIQ {c} under {data}", sets[-1].missing, strict)
    return run(
        engine,
        Rules("fashioniq", _score, grouped=True, average=True),
        split,
        mode,
        sets,
        prompt,
        alpha=alpha,
        sweep=alpha_sweep,
    )


def _query(caption: dict[str, Any], order: str) -> Query:
    """Pic2Word's text is ``{cap2} and {cap1}``; ``both`` averages it with ``{cap1} and {cap2}``."""
    c = caption["captions"]
    texts = (f"{c[1]} and {c[0]}",) if order == "pic2word" else (f"{c[1]} and {c[0]}", f"{c[0]} and {c[1]}")
    return Query(caption["candidate"], texts, caption["target"], needs=(caption["target"],))


def _score(scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """R@1/5/10/50/100 of the target, in percent."""
    return percent(m.recall_at(m.ranks_in(scores, qs.positions(qs.truths()))))
