"""CIRR (Liu et al., ICCV 2021): the gallery is the split's images with each query's reference removed from its
ranking; prompt ``a photo of * , {caption}``; Recall@1/5/10/50 and Recall_subset@1/2/3 over each query's ``img_set``
(CIRR's own definition; the Pic2Word reference code lacks it). ``test1`` writes the test server's two files."""

from __future__ import annotations

import json
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
    mapper_name,
    modes_of,
    query_vectors,
    read_json,
    template_for,
    unit_rows,
)

TEMPLATES = {"pic2word": "a photo of * , {text}", "text": "{text}", "average": "{text}", "image": "{text}"}
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
    feats = image_features(engine, list(paths.values()), home, workers, batch_size, progress, preprocess)
    gallery = [n for n in names if str(paths[n]) in feats]
    index = {n: i for i, n in enumerate(gallery)}
    ok = [i for i, q in enumerate(caps) if q["reference"] in index and (test or q["target_hard"] in index)]
    missing = {"gallery_images": len(names) - len(gallery), "queries": len(caps) - len(ok)}
    check_missing(f"CIRR {split} under {data}", missing, strict)
    g = unit_rows([feats[str(paths[n])] for n in gallery], engine.backbone.embed_dim)
    refs = np.stack([feats[str(paths[caps[i]["reference"]])] for i in ok]) if ok else None
    exclude = np.array([index[caps[i]["reference"]] for i in ok], dtype=np.int64)
    subsets = [[index[x] for x in caps[i]["img_set"]["members"] if x in index] for i in ok]
    results = []
    for md in modes_of(mode):
        q = query_vectors(
            engine, md, template_for(engine, "cirr", md, TEMPLATES[md], prompt), refs, [caps[i]["caption"] for i in ok]
        )
        # one (Q, G) score matrix: R@K, Recall_subset, the top 50 and the server's subset top 3 all rank from it
        scores = m.score_matrix(q, g, exclude) if ok else np.zeros((0, len(gallery)), dtype=np.float32)
        tops = m.top_of(scores, gallery)
        preds = {"cirr": in_order(ok, tops, len(caps))}
        result = EvalResult("cirr", split, md, engine.backbone.id, mapper_name(engine), {}, missing, preds)
        if test:
            pair_ids = [caps[i]["pairid"] for i in ok]
            _write_submission(submission, md, pair_ids, scores, subsets, gallery, tops)  # type: ignore[arg-type]
        elif ok:
            targets = np.array([index[caps[i]["target_hard"]] for i in ok], dtype=np.int64)
            ranks = m.ranks_in(scores, targets)
            subset_ranks = m.subset_ranks(scores, targets, subsets)
            result.metrics = {k: 100 * v for k, v in m.recall_at(ranks, KS).items()}
            result.metrics.update({k: 100 * v for k, v in m.recall_at(subset_ranks, (1, 2, 3), "Rsubset").items()})
        results.append(result)
    return results


def _write_submission(
    folder: Path,
    mode: str,
    pair_ids: list[int],
    scores: np.ndarray,
    subsets: list[list[int]],
    gallery: list[str],
    tops: list[list[str]],
) -> None:
    """``cirr-test1-<mode>-recall.json`` (the top 50) and ``...-recall_subset.json`` (the top 3 of each pair's
    ``img_set``, reference left out) as the CIRR server wants them, both from the same ``scores`` (Q, G)."""
    folder.mkdir(parents=True, exist_ok=True)
    recall = m.cirr_submission(pair_ids, tops)
    subset = m.cirr_submission(pair_ids, m.subset_tops(scores, subsets, gallery), "recall_subset")
    for kind, content in (("recall", recall), ("recall_subset", subset)):
        (folder / f"cirr-test1-{mode}-{kind}.json").write_text(json.dumps(content), encoding="utf-8")
