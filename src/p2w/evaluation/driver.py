"""The one evaluation driver. A benchmark reads its annotations into a neutral description (gallery names, and
queries with a reference image, texts, ground truth, the target they need and the image they may not find) and
states what is its own in ``Rules``: its metrics, its ranking if not ``metrics.top_of``, its server files.

``run`` does the rest, alike for every benchmark: per mode and query set the template (``common.template_for``),
the query vectors (``common.query_vectors``) and ONE ``(Q, G)`` score matrix, from which the metrics, the top names
(predictions, in annotation order) and the server's files are all taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from p2w.core.compose import FUSIONS, QueryPlan, fill
from p2w.engine import Engine
from p2w.evaluation import metrics as m
from p2w.evaluation.common import (
    EvalResult,
    in_order,
    l2n,
    modes_of,
    query_vectors,
    template_for,
    text_features,
    unit_rows,
)


@dataclass(frozen=True)
class Query:
    """One annotated query: its reference image (a name of the images read; None: the benchmark encodes its own),
    its text (several: their query vectors are summed and normalised), its ground truth (the benchmark's record),
    the gallery names it needs present (its target) and the gallery name left out of its ranking."""

    reference: str | None
    texts: tuple[str | None, ...] = (None,)
    truth: Any = None
    needs: tuple[str, ...] = ()
    exclude: str | None = None


@dataclass(frozen=True)
class QuerySet:
    """Queries ranked against one gallery, as ``run`` takes them: the images present, as vectors."""

    name: str  # the key of its predictions (and of its metrics with Rules.grouped): "cirr", "dress", "cartoon"
    templates: Mapping[str, str]  # mode -> the benchmark's own template (common.template_for decides)
    gallery: list[str]  # (G,) names of the gallery images present, in annotation order
    vectors: np.ndarray  # (G, dim) float32, unit L2 norm
    index: dict[str, int]  # gallery name -> row
    queries: list[Query]  # every annotated query, in annotation order
    rows: list[int]  # the evaluated queries (their images present): indices into queries
    refs: np.ndarray | None  # (Q, dim) float32 unnormalised reference features of rows; None without rows
    exclude: np.ndarray | None  # (Q,) gallery row left out of each evaluated query's ranking
    missing: dict[str, int]

    def truths(self) -> list[Any]:
        """The ground truth of each evaluated query."""
        return [self.queries[i].truth for i in self.rows]

    def positions(self, names: Sequence[str]) -> np.ndarray:
        """Gallery rows ``(n,)`` int64 of ``names``."""
        return np.array([self.index[n] for n in names], dtype=np.int64)


def query_set(
    name: str,
    templates: Mapping[str, str],
    images: Mapping[str, np.ndarray],
    gallery: Sequence[str],
    queries: Sequence[Query],
    dim: int,
    prefix: str = "",
) -> QuerySet:
    """The ``gallery`` names and ``queries`` whose images are among ``images`` (unnormalised features by name); a
    query counts when its reference, its needs and its exclusion are there. ``missing`` counts the rest."""
    kept = [n for n in gallery if n in images]
    index = {n: i for i, n in enumerate(kept)}
    rows = [i for i, q in enumerate(queries) if _present(q, images, index)]
    refs = None
    if rows and all(queries[i].reference is not None for i in rows):
        refs = np.stack([images[queries[i].reference] for i in rows])  # type: ignore[index]
    exclude = None
    if any(q.exclude is not None for q in queries):
        exclude = np.array([index[queries[i].exclude] for i in rows], dtype=np.int64)  # type: ignore[index]
    missing = {f"{prefix}gallery_images": len(gallery) - len(kept), f"{prefix}queries": len(queries) - len(rows)}
    vectors = unit_rows([images[n] for n in kept], dim)
    return QuerySet(name, templates, kept, vectors, index, list(queries), rows, refs, exclude, missing)


def _present(q: Query, images: Mapping[str, np.ndarray], index: Mapping[str, int]) -> bool:
    """Whether every image ``q`` needs was read."""
    if q.reference is not None and q.reference not in images:
        return False
    return all(n in index for n in q.needs) and (q.exclude is None or q.exclude in index)


Metrics = Callable[[np.ndarray, list[list[str]], QuerySet], dict[str, Any]]
Submit = Callable[[str, np.ndarray, list[list[str]], QuerySet], None]


@dataclass(frozen=True)
class Rules:
    """What is a benchmark's own in ``run``; ``score`` and ``submit`` get the scores ``(Q, G)`` of one query set in
    one mode and its top names (in ``rows`` order)."""

    benchmark: str  # EvalResult.benchmark and common.template_for's key
    score: Metrics | None  # its metrics, in percent; None: no metrics (a test split)
    submit: Submit | None = None  # writes the server's files of one mode (a test split)
    grouped: bool = False  # metrics keyed by query set (FashionIQ's categories), not flat
    average: bool = False  # and their mean over the query sets, "average"
    top: Callable[[np.ndarray, Sequence[str]], list[list[str]]] = m.top_of  # the top names of each row
    product: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray] = m.score_matrix  # (Q, G)


def run(
    engine: Engine,
    rules: Rules,
    split: str,
    mode: str,
    sets: Sequence[QuerySet],
    prompt: str | None = None,
    alpha: float | None = None,
    sweep: bool = False,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode of ``mode`` (``all``: every mode) and alpha (``common.modes_of``: a fusion's
    ``alpha``, or each of ``common.SWEEP`` with ``sweep``) over ``sets``; ``prompt`` is ``--prompt``."""
    results = []
    texts: dict[tuple[str, str, int], np.ndarray] = {}  # a sweep encodes each query set's texts once
    for md, a in modes_of(mode, alpha, sweep, engine.backbone.id):
        result = EvalResult(rules.benchmark, split, md, engine.backbone.id, engine.mapper_name, {}, {}, alpha=a)
        for qs in sets:
            metrics, result.predictions[qs.name] = _rank(engine, rules, qs, QueryPlan(md, "", a), prompt, texts)
            if rules.grouped:
                result.metrics[qs.name] = metrics
            else:
                result.metrics = metrics
            result.missing.update(qs.missing)
        if rules.average:
            groups = [result.metrics[qs.name] for qs in sets]
            result.metrics["average"] = {k: float(np.mean([g[k] for g in groups])) for k in groups[0]}
        results.append(result)
    return results


def _rank(
    engine: Engine,
    rules: Rules,
    qs: QuerySet,
    qp: QueryPlan,
    prompt: str | None,
    texts: dict[tuple[str, str, int], np.ndarray],
) -> tuple[dict[str, Any], list[list[str]]]:
    """The metrics of one query set in one mode (``qp``, its template still to choose) and its predictions in
    annotation order; writes its server files."""
    qp = replace(qp, template=template_for(engine, rules.benchmark, qp.mode, qs.templates[qp.mode], prompt))
    scores = rules.product(_vectors(engine, qp, qs, texts), qs.vectors, qs.exclude)  # (Q, G), the only one
    tops = rules.top(scores, qs.gallery)
    if rules.submit is not None:
        rules.submit(qp.mode if qp.alpha is None else f"{qp.mode}-{qp.alpha:g}", scores, tops, qs)
    metrics = rules.score(scores, tops, qs) if rules.score is not None else {}
    return metrics, in_order(qs.rows, tops, len(qs.queries))


def _vectors(engine: Engine, qp: QueryPlan, qs: QuerySet, texts: dict[tuple[str, str, int], np.ndarray]) -> np.ndarray:
    """Unit query vectors ``(Q, dim)``; a query's several texts: the normalised sum of theirs (image mode: one). A
    fusion's text features are kept in ``texts`` for the next alpha."""
    width = len(qs.queries[qs.rows[0]].texts) if qs.rows and qp.mode != "image" else 1
    each = []
    for k in range(width):
        words = [qs.queries[i].texts[k] for i in qs.rows]
        cached = None
        if qp.mode in FUSIONS and qs.refs is not None:
            key = (qs.name, qp.template, k)
            if key not in texts:
                texts[key] = text_features(engine, [fill(qp.template, w, qp.mode) for w in words])
            cached = texts[key]
        each.append(query_vectors(engine, qp, qs.refs, words, text=cached))
    return each[0] if width == 1 else l2n(sum(each[1:], each[0]))
