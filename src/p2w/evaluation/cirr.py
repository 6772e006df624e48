"""CIRR (Liu et al., ICCV 2021): the gallery is the split's images with each query's reference removed from its
ranking; prompt ``a photo of * , {caption}``; Recall@1/5/10/50 and Recall_subset@1/2/3 over each query's ``img_set``
(CIRR's own definition; the Pic2Word reference code lacks it). ``test1`` writes the test server's two files."""

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
from p2w.evaluation.common import EvalResult, Progress, check_missing, image_vectors, percent, read_json
from p2w.evaluation.driver import Query, QuerySet, Rules, query_set, run

# the baselines and the fusions read the relative caption as written (as CIRR's authors and the Slerp and WeiMoCIR
# code do)
TEMPLATES = dict.fromkeys(MAPPED, "a photo of * , {text}") | dict.fromkeys(
    ("text", "average", "image", *FUSIONS), "{text}"
)
KS = (1, 5, 10, 50)


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` is not a CIRR folder."""
    if not (data / "captions").is_dir() or not (data / "image_splits").is_dir():
        raise P2WError(f"{data} is not a CIRR folder: it needs captions/cap.rc2.{{split}}.json and image_splits/")


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
    submission: Path | None = None,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode; with ``split="test1"``, no metrics but the test-server files in ``submission``."""
    caps = read_json(data / "captions" / f"cap.rc2.{split}.json")
    names: dict[str, str] = read_json(data / "image_splits" / f"split.rc2.{split}.json")
    test = "target_hard" not in (caps[0] if caps else {})
    if test and submission is None:
        raise P2WError(f"CIRR {split} has no targets: pass --submission DIR to write the test server's files")
    paths = {n: data / rel for n, rel in names.items()}
    images = image_vectors(engine, paths, home, workers, batch_size, progress, preprocess)
    queries = [_query(q, test) for q in caps]
    qs = query_set("cirr", TEMPLATES, images, list(names), queries, engine.backbone.embed_dim)
    check_missing(f"CIRR {split} under {data}", qs.missing, strict)
    return run(engine, _rules(submission if test else None), split, mode, [qs], prompt, alpha=alpha, sweep=alpha_sweep)


def _rules(submission: Path | None) -> Rules:
    """The metrics, or in a test split (``submission``) the server's files."""
    if submission is None:
        return Rules("cirr", _score)
    return Rules("cirr", None, partial(_write_submission, submission))


def _query(caption: dict[str, Any], test: bool) -> Query:
    """A caption: its reference image, left out of its own ranking, and (but in a test split) its target."""
    needs = () if test else (caption["target_hard"],)
    return Query(caption["reference"], (caption["caption"],), caption, needs, exclude=caption["reference"])


def _subsets(qs: QuerySet) -> list[list[int]]:
    """The gallery rows of each evaluated query's ``img_set`` (its reference left out later, by the scores)."""
    return [[qs.index[x] for x in q["img_set"]["members"] if x in qs.index] for q in qs.truths()]


def _score(scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """Recall@1/5/10/50 and Recall_subset@1/2/3 of the target, in percent (none without queries)."""
    if not qs.rows:
        return {}
    targets = qs.positions([q["target_hard"] for q in qs.truths()])
    subset_ranks = m.subset_ranks(scores, targets, _subsets(qs))
    metrics = percent(m.recall_at(m.ranks_in(scores, targets), KS))
    return {**metrics, **percent(m.recall_at(subset_ranks, (1, 2, 3), "Rsubset"))}


def _write_submission(folder: Path, mode: str, scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> None:
    """``cirr-test1-<mode>-recall.json`` (the top 50) and ``...-recall_subset.json`` (the top 3 of each pair's
    ``img_set``, reference left out) as the CIRR server wants them, both from the same ``scores`` (Q, G)."""
    folder.mkdir(parents=True, exist_ok=True)
    pair_ids = [q["pairid"] for q in qs.truths()]
    recall = m.cirr_submission(pair_ids, tops)
    subset = m.cirr_submission(pair_ids, m.subset_tops(scores, _subsets(qs), qs.gallery), "recall_subset")
    for kind, content in (("recall", recall), ("recall_subset", subset)):
        (folder / f"cirr-test1-{mode}-{kind}.json").write_text(json.dumps(content), encoding="utf-8")
