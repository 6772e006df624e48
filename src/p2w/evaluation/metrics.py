"""Retrieval metrics of the composed-image-retrieval papers, on L2-normalised features (numpy, float32 scores).

All rank arrays are 0-based: rank 0 is the top result. Functions return fractions; benchmarks print percent.

Every rank and name list of one query set comes from one ``(Q, G)`` score matrix (``score_matrix``), never from a
score computed again another way: two float32 products of the same vectors (a matrix product and a dot product,
or a subset's own product) can differ in the last bit, and a target compared with its own recomputed score then
outranks itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10, 50, 100)


def score_matrix(queries: np.ndarray, gallery: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """The float32 scores ``(Q, G)`` of unit ``queries`` (Q, D) against a unit ``gallery`` (G, D); an excluded item
    (``exclude`` (Q,) gallery indices: CIRR removes each query's reference image) scores ``-inf``."""
    scores = (queries.astype(np.float32) @ gallery.astype(np.float32).T).astype(np.float32)
    if exclude is not None:
        scores[np.arange(len(scores)), exclude] = -np.inf
    return scores


def ranks_in(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target ``(Q,)`` in ``score_matrix`` output: how many items of its row score higher."""
    own = scores[np.arange(len(scores)), targets][:, None]
    return (scores > own).sum(axis=1)


def target_ranks(
    queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Rank of each query's target ``(n_queries,)``: how many gallery items score higher.

    ``queries`` (Q, D) and ``gallery`` (G, D) are unit vectors; ``targets`` and ``exclude`` (Q,) are gallery indices;
    an excluded item (CIRR removes each query's reference image) never counts.
    """
    return ranks_in(score_matrix(queries, gallery, exclude), targets)


def recall_at(ranks: np.ndarray, ks: Sequence[int] = KS, prefix: str = "R") -> dict[str, float]:
    """``{"R@k": fraction of targets ranked in the top k}`` (``prefix`` names the key: ``Rsubset`` for CIRR)."""
    return {f"{prefix}@{k}": float(np.mean(ranks < k)) for k in ks}


def subset_ranks(scores: np.ndarray, targets: np.ndarray, subsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Rank of each row's target ``(Q,)`` among its own ``subsets[row]`` (gallery indices), from the same
    ``score_matrix`` output as ``ranks_in``: how many members score higher. Excluded members (``-inf``) are left out;
    a target outside its subset (or excluded) gets rank G, a hit at no k."""
    out = np.empty(len(subsets), dtype=np.int64)
    for i, members in enumerate(subsets):
        row = scores[i]
        kept = [j for j in members if row[j] > -np.inf]
        out[i] = int((row[kept] > row[targets[i]]).sum()) if targets[i] in kept else row.shape[0]
    return out


def subset_recall(
    queries: np.ndarray,
    gallery: np.ndarray,
    targets: np.ndarray,
    subsets: Sequence[Sequence[int]],
    exclude: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR's Recall_subset@K: the target's rank among the query's own ``img_set`` (its reference left out)."""
    if not len(subsets):
        return {f"Rsubset@{k}": 0.0 for k in ks}
    return recall_at(subset_ranks(score_matrix(queries, gallery, exclude), targets, subsets), ks, "Rsubset")


def top_of(scores: np.ndarray, names: Sequence[str], top: int = 50) -> list[list[str]]:
    """The ``top`` names of each row of ``score_matrix`` output, best first (excluded items left out)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, : top + 1]
    return [[names[j] for j in row if scores[i, j] > -np.inf][:top] for i, row in enumerate(order)]


def top_names(
    queries: np.ndarray, gallery: np.ndarray, names: Sequence[str], exclude: np.ndarray | None = None, top: int = 50
) -> list[list[str]]:
    """The ``top`` gallery names of each query, best first (excluded items left out)."""
    return top_of(score_matrix(queries, gallery, exclude), names, top)


def subset_tops(
    scores: np.ndarray, subsets: Sequence[Sequence[int]], names: Sequence[str], top: int = 3
) -> list[list[str]]:
    """The ``top`` names of each row's own subset, best first (excluded members left out), from the same
    ``score_matrix`` output as ``subset_ranks``: the CIRR server's ``recall_subset`` predictions."""
    out = []
    for i, members in enumerate(subsets):
        row = scores[i]
        kept = [j for j in members if row[j] > -np.inf]
        out.append([names[kept[j]] for j in np.argsort(-row[kept], kind="stable")[:top]])
    return out


def cirr_submission(
    pair_ids: Sequence[int], tops: Sequence[Sequence[str]], metric: str = "recall"
) -> dict[str, object]:
    """The CIRR test server's JSON: ``{"version": "rc2", "metric": "recall", "<pair id>": [50 names]}`` (``top_of``),
    or with ``metric="recall_subset"`` the top 3 of each pair's ``img_set`` (``subset_tops``)."""
    out: dict[str, object] = {"version": "rc2", "metric": metric}
    keep = 3 if metric == "recall_subset" else 50
    for pair, names in zip(pair_ids, tops, strict=True):
        out[str(int(pair))] = [n.removesuffix(".png") for n in names[:keep]]
    return out


def domain_metrics(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (*KS, 200),
) -> dict[str, float]:
    """ImageNet -> ImageNet-R (the Pic2Word reference's metric): per query, R@k = relevant in the top k / all relevant
    (0 when none is relevant), P@k = relevant in the top k / min(k, gallery size); both averaged over queries."""
    return domain_metrics_in(score_matrix(queries, gallery), query_labels, gallery_labels, ks)


def domain_metrics_in(
    scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, ks: Sequence[int] = (*KS, 200)
) -> dict[str, float]:
    """``domain_metrics`` from ``score_matrix`` output ``(Q, G)``; labels ``(Q,)`` and ``(G,)``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant = query_labels[:, None] == gallery_labels[None, :]  # (Q, G)
    ranked = np.take_along_axis(relevant, order, axis=1)
    total = relevant.sum(axis=1)
    out = {}
    for k in ks:
        found = ranked[:, :k].sum(axis=1)
        out[f"R@{k}"] = float(np.mean(np.where(total > 0, found / np.maximum(total, 1), 0.0)))
        out[f"P@{k}"] = float(np.mean(found / min(k, scores.shape[1])))
    return out


def paired_ranks(images: np.ndarray, refs: np.ndarray) -> dict[str, float]:
    """COCO composition (the reference's metric): row i of each matches row i of the other, in both directions;
    mean rank (1-based), median rank (floor of the 0-based median, plus 1) and R@k fractions."""
    return paired_ranks_in(score_matrix(images, refs))


def paired_ranks_in(scores: np.ndarray) -> dict[str, float]:
    """``paired_ranks`` from ``score_matrix(images, refs)`` output ``(n, n)``, the reference's orientation."""
    out: dict[str, float] = {}
    for name, s in (("image_to_ref", scores), ("ref_to_image", scores.T)):
        rows = np.arange(len(s))
        ranks = (s > s[rows, rows][:, None]).sum(axis=1)
        out[f"{name}_mean_rank"] = float(ranks.mean() + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
        out.update({f"{name}_{k}": v for k, v in recall_at(ranks).items()})
    return out


def map_at(
    ranked: Sequence[Sequence[object]], relevant: Sequence[Sequence[object]], ks: Sequence[int] = (5, 10, 25, 50)
) -> dict[str, float]:
    """CIRCO's mAP@K: per query, the sum of precision@i over the ranks i <= K holding a ground truth, divided by
    min(K, number of ground truths); averaged over queries."""
    out = {f"mAP@{k}": 0.0 for k in ks}
    for preds, gts in zip(ranked, relevant, strict=True):
        hits = np.isin(np.asarray(preds, dtype=object), np.asarray(gts, dtype=object)).astype(np.float64)
        precision = np.cumsum(hits) * hits / np.arange(1, len(hits) + 1)
        for k in ks:
            out[f"mAP@{k}"] += float(precision[:k].sum()) / max(1, min(len(gts), k))
    return {key: value / max(1, len(ranked)) for key, value in out.items()}
