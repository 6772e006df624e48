"""FashionIQ (Wu et al., CVPR 2021) in Pic2Word's protocol: per category, the gallery is the category's split
(the reference image is not removed); prompt ``a photo of * , {cap2} and {cap1}``; R@10 and R@50, and their average."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.evaluation import metrics as m
from p2w.evaluation.common import (
    EvalResult,
    Progress,
    check_missing,
    image_features,
    in_order,
    l2n,
    mapper_name,
    modes_of,
    query_vectors,
    read_json,
    template_for,
    unit_rows,
)

CATEGORIES = ("dress", "shirt", "toptee")
TEMPLATE = "a photo of * , {text}"


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
    feats = image_features(engine, list(paths.values()), home, workers, batch_size, progress, preprocess)
    vec = {a: feats[str(p)] for a, p in paths.items() if p is not None and str(p) in feats}
    results = {
        md: EvalResult("fashioniq", split, md, engine.backbone.id, mapper_name(engine), {}, {}) for md in modes_of(mode)
    }
    for c, (caps, gallery_ids) in annotations.items():
        gallery = [a for a in gallery_ids if a in vec]
        index = {a: i for i, a in enumerate(gallery)}
        ok = [i for i, q in enumerate(caps) if q["candidate"] in vec and q["target"] in index]
        missing = {f"{c}_gallery_images": len(gallery_ids) - len(gallery), f"{c}_queries": len(caps) - len(ok)}
        check_missing(f"FashionIQ {c} under {data}", missing, strict)
        g = unit_rows([vec[a] for a in gallery], engine.backbone.embed_dim)
        refs = np.stack([vec[caps[i]["candidate"]] for i in ok]) if ok else None
        targets = np.array([index[caps[i]["target"]] for i in ok], dtype=np.int64)
        for md, result in results.items():
            template = template_for(engine, "fashioniq", md, TEMPLATE, prompt)
            q = _queries(engine, md, template, refs, [caps[i]["captions"] for i in ok], caption_order)
            ranks = m.target_ranks(q, g, targets) if len(ok) else np.zeros(0, dtype=np.int64)
            result.metrics[c] = {k: 100 * v for k, v in m.recall_at(ranks).items()}
            result.missing.update(missing)
            tops = m.top_names(q, g, gallery) if len(ok) else []
            result.predictions[c] = in_order(ok, tops, len(caps))
    for result in results.values():
        result.metrics["average"] = {
            k: float(np.mean([result.metrics[c][k] for c in categories])) for k in result.metrics[categories[0]]
        }
    return list(results.values())


def _queries(
    engine: Engine, mode: str, template: str, refs: np.ndarray | None, captions: list[list[str]], order: str
) -> np.ndarray:
    """Pic2Word's text is ``{cap2} and {cap1}``; ``both`` averages it with ``{cap1} and {cap2}``."""
    texts = [f"{c[1]} and {c[0]}" for c in captions]
    q = query_vectors(engine, mode, template, refs, texts)
    if order == "both" and mode != "image":
        q = l2n(q + query_vectors(engine, mode, template, refs, [f"{c[0]} and {c[1]}" for c in captions]))
    return q
