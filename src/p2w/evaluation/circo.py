"""CIRCO (Baldrati et al., ICCV 2023): COCO 2017 unlabeled images as the gallery, several ground truths per query;
the reference image is left out of its own ranking; mAP@5/10/25/50 over ``gt_img_ids`` (and Recall@K of the
caption's own target); ``test`` writes the evaluation server's submission."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from p2w.core.compose import FUSIONS, MAPPED
from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.evaluation import metrics as m
from p2w.evaluation.common import EvalResult, Progress, check_missing, image_vectors, in_order, percent, read_json
from p2w.evaluation.driver import Query, QuerySet, Rules, query_set, run

KS = (5, 10, 25, 50)
STYLES = {
    # the relative caption alone (Pic2Word's composition), or with the shared concept named first
    "caption": lambda q: q["relative_caption"],
    "concept": lambda q: f"{q['shared_concept']} {q['relative_caption']}",
}
# the baselines and the fusions read the relative caption as written (as CIRCO's authors and the Slerp and WeiMoCIR
# code do)
TEMPLATES = dict.fromkeys(MAPPED, "a photo of * , {text}") | dict.fromkeys(
    ("text", "average", "image", *FUSIONS), "{text}"
)


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` is not a CIRCO folder."""
    if not (data / "annotations").is_dir():
        raise P2WError(f"{data} is not a CIRCO folder: it needs annotations/{{val,test}}.json")


def evaluate(
    engine: Engine,
    data: Path,
    home: Path,
    mode: str = "pic2word",
    alpha: float | None = None,
    alpha_sweep: bool = False,
    split: str = "val",
    strict: bool = False,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    prompt: str | None = None,
    preprocess: str = "clip",
    gallery: Path | None = None,
    query_style: str = "caption",
    submission: Path | None = None,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode; ``split="test"`` writes ``circo-test-<mode>.json`` into ``submission``."""
    if query_style not in STYLES:
        raise P2WError(f"--query-style is one of {', '.join(STYLES)}")
    queries = read_json(data / "annotations" / f"{split}.json")
    folder = gallery or data / "COCO2017_unlabeled" / "unlabeled2017"
    if not folder.is_dir():
        raise P2WError(f"CIRCO gallery folder not found: {folder}; point --gallery at COCO 2017 unlabeled images")
    test = "gt_img_ids" not in (queries[0] if queries else {})
    if test and submission is None:
        raise P2WError(f"CIRCO {split} has no ground truths: pass --submission DIR to write the server file")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = {str(int(p.stem)): p for p in files}  # image id -> file
    images = image_vectors(engine, paths, home, workers, batch_size, progress, preprocess)
    described = [_query(q, query_style) for q in queries]
    qs = query_set("circo", TEMPLATES, images, [str(int(p.stem)) for p in files], described, engine.backbone.embed_dim)
    check_missing(f"CIRCO {split}", qs.missing, strict)
    return run(
        engine, _rules(submission if test else None, split), split, mode, [qs], prompt, alpha=alpha, sweep=alpha_sweep
    )


def _rules(submission: Path | None, split: str) -> Rules:
    """The metrics, or in a test split (``submission``) the server's file."""
    if submission is None:
        return Rules("circo", _score)
    return Rules("circo", None, partial(_write_submission, submission, split))


def _query(query: dict[str, Any], style: str) -> Query:
    """A query: its reference image (by id), left out of its own ranking, and its text in ``style``."""
    reference = str(int(query["reference_img_id"]))
    return Query(reference, (STYLES[style](query),), query, exclude=reference)


def _score(scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """mAP@5/10/25/50 over ``gt_img_ids`` and Recall@K of ``target_img_id``, from the top 50 (none without queries)."""
    if not qs.rows:
        return {}
    gts = [[str(int(x)) for x in q["gt_img_ids"]] for q in qs.truths()]
    targets = [str(int(q["target_img_id"])) for q in qs.truths()]
    found = [t.index(x) if x in t else len(t) for x, t in zip(targets, tops, strict=True)]
    return {**percent(m.map_at(tops, gts, KS)), **percent(m.recall_at(np.array(found), KS))}


def _write_submission(
    folder: Path, split: str, mode: str, scores: np.ndarray, tops: list[list[str]], qs: QuerySet
) -> None:
    """``circo-<split>-<mode>.json``: ``{query id: [top-50 image ids]}``, ``[]`` for a query left out."""
    ranked = in_order(qs.rows, tops, len(qs.queries))
    out = {str(q.truth["id"]): [int(x) for x in p] for q, p in zip(qs.queries, ranked, strict=True)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"circo-{split}-{mode}.json").write_text(json.dumps(out), encoding="utf-8")
