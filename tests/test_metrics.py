"""Metrics against the reference implementation's outputs (tests/data/pic2word-parity/metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2w.evaluation import metrics as m


@pytest.fixture(scope="module")
def golden(tv: Path) -> tuple[dict, dict]:
    return dict(np.load(tv / "metrics_inputs.npz")), json.loads((tv / "metrics.json").read_text())


def test_fashioniq_recall(golden):
    x, want = golden
    ranks = m.target_ranks(x["query_features"], x["gallery_features"], x["target_index"])
    got = {k: 100 * v for k, v in m.recall_at(ranks).items()}
    assert got == pytest.approx(want["fashioniq"], abs=1e-5)


def test_cirr_recall_removes_the_reference(golden):
    x, want = golden
    ranks = m.target_ranks(x["query_features"], x["gallery_features"], x["target_index"], x["reference_index"])
    got = {f"recall_{k}": 100 * v for k, v in m.recall_at(ranks).items()}
    assert got == pytest.approx(want["cirr"], abs=1e-5)


def test_cirr_test_submission(golden):
    x, want = golden
    names = [str(n) for n in x["index_names"]]
    tops = m.top_names(x["query_features"], x["gallery_features"], names, x["reference_index"])
    assert m.cirr_submission(x["pair_ids"], tops) == want["cirr_test_output"]


def test_domain_metrics(golden):
    x, want = golden
    got = m.domain_metrics(
        x["imgnet_query_features"], x["imgnet_target_features"], x["imgnet_query_labels"], x["imgnet_target_labels"]
    )
    expected = {k.removeprefix("Real2Sketch_"): v for k, v in want["imgnet"].items()}
    assert got == pytest.approx(expected, abs=1e-5)


def test_coco_paired_ranks(golden):
    x, want = golden
    got = m.paired_ranks(x["coco_image_features"], x["coco_ref_features"])
    assert got == pytest.approx(want["coco"], abs=1e-6)


def test_subset_recall_by_hand():
    gallery = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32)  # scores: 0.1, 0.9, 0.5, 0.0
    # target 2 in the subset {0, 1, 2, 3}, reference 1 excluded: only item 1 beat it, so it is first
    got = m.subset_recall(query, gallery, np.array([2]), [[0, 1, 2, 3]], exclude=np.array([1]))
    assert got == {"Rsubset@1": 1.0, "Rsubset@2": 1.0, "Rsubset@3": 1.0}
    got = m.subset_recall(query, gallery, np.array([0]), [[0, 1, 2, 3]], exclude=np.array([1]))
    assert got == {"Rsubset@1": 0.0, "Rsubset@2": 1.0, "Rsubset@3": 1.0}


def test_map_at_k_by_hand():
    # ranked a, x, b, y with ground truths {a, b, c}: AP@4 = (1/1 + 2/3) / min(3, 4)
    got = m.map_at([["a", "x", "b", "y"]], [["a", "b", "c"]], ks=(1, 2, 4))
    assert got == pytest.approx({"mAP@1": 1.0, "mAP@2": 0.5, "mAP@4": (1 + 2 / 3) / 3})


def _random_cirr(seed: int = 0, n: int = 400, size: int = 300, dim: int = 512, members: int = 6):
    """``n`` random unit queries on a random unit gallery; per query an ``img_set`` of ``members`` gallery items
    holding its reference (excluded) and its target."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((size, dim)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.standard_normal((n, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    subsets = [rng.choice(size, members, replace=False).tolist() for _ in range(n)]
    refs = np.array([s[0] for s in subsets], dtype=np.int64)
    targets = np.array([s[int(rng.integers(1, members))] for s in subsets], dtype=np.int64)
    return q, g, targets, subsets, refs


def test_subset_recall_matches_an_argsort_over_the_subset():
    # The target's position in a plain argsort of the (Q, G) scores restricted to its subset: the target never
    # counts above itself, whatever the summation order of a separate dot product would give in the last bit.
    q, g, targets, subsets, refs = _random_cirr()
    scores = q @ g.T
    want = {1: 0, 2: 0, 3: 0}
    for i, members in enumerate(subsets):
        kept = [x for x in members if x != refs[i]]
        order = [kept[j] for j in np.argsort(-scores[i, kept], kind="stable")]
        for k in want:
            want[k] += targets[i] in order[:k]
    got = m.subset_recall(q, g, targets, subsets, exclude=refs)
    assert got == {f"Rsubset@{k}": v / len(subsets) for k, v in want.items()}
    # and a subset rank never exceeds the full-gallery rank (the subset is part of the gallery, same scores)
    full = m.target_ranks(q, g, targets, refs)
    for k in (1, 2, 3):
        assert got[f"Rsubset@{k}"] >= m.recall_at(full, (k,))[f"R@{k}"]


def test_cirr_subset_submission_agrees_with_subset_recall():
    # The recall_subset server file (top 3 of each img_set, reference left out) ranks from the same scores as the
    # metric: its top k holds the target exactly when the metric counts a hit at k.
    q, g, targets, subsets, refs = _random_cirr(seed=1)
    names = [f"img{j}.png" for j in range(len(g))]
    scores = m.score_matrix(q, g, refs)
    pair_ids = list(range(100, 100 + len(q)))
    sub = m.cirr_submission(pair_ids, m.subset_tops(scores, subsets, names), "recall_subset")
    assert sub["version"] == "rc2" and sub["metric"] == "recall_subset" and len(sub) == 2 + len(q)
    picks = []
    for i, p in enumerate(pair_ids):
        picked = sub[str(p)]
        assert isinstance(picked, list) and len(picked) == 3 and f"img{refs[i]}" not in picked
        assert set(picked) <= {f"img{j}" for j in subsets[i]}
        picks.append(picked)
    ranks = m.subset_ranks(scores, targets, subsets)
    got = m.subset_recall(q, g, targets, subsets, exclude=refs)
    for k in (1, 2, 3):
        hits = [f"img{targets[i]}" in picked[:k] for i, picked in enumerate(picks)]
        assert hits == list(ranks < k)
        assert got[f"Rsubset@{k}"] == np.mean(hits)
