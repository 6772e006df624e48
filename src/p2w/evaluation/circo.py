"""CIRCO (Baldrati et al., ICCV 2023): COCO 2017 unlabeled images as the gallery, several ground truths per query;
the reference image is left out of its own ranking; mAP@5/10/25/50 over ``gt_img_ids`` (and Recall@K of the
caption's own target); ``test`` writes the evaluation server's submission."""

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

KS = (5, 10, 25, 50)
STYLES = {
    # the relative caption alone (Pic2Word's composition), or with the shared concept named first
    "caption": lambda q: q["relative_caption"],
    "concept": lambda q: f"{q['shared_concept']} {q['relative_caption']}",
}
TEMPLATES = {"pic2word": "a photo of * , {text}", "text": "{text}", "average": "{text}", "image": "{text}"}


def image_name(image_id: int) -> str:
    """COCO's file name of an image id, e.g. ``000000009761.jpg``."""
    return f"{int(image_id):012d}.jpg"


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` is not a CIRCO folder."""
    if not (data / "annotations").is_dir():
        raise P2WError(f"{data} is not a CIRCO folder: it needs annotations/{{val,test}}.json")


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
    feats = image_features(engine, files, home, workers, batch_size, progress, preprocess)
    ids = [int(p.stem) for p in files if str(p) in feats]
    g = unit_rows([feats[str(p)] for p in files if str(p) in feats], engine.backbone.embed_dim)
    index = {i: n for n, i in enumerate(ids)}
    ok = [n for n, q in enumerate(queries) if int(q["reference_img_id"]) in index]
    missing = {"gallery_images": len(files) - len(ids), "queries": len(queries) - len(ok)}
    check_missing(f"CIRCO {split}", missing, strict)
    refs = np.stack([feats[str(folder / image_name(queries[n]["reference_img_id"]))] for n in ok]) if ok else None
    exclude = np.array([index[int(queries[n]["reference_img_id"])] for n in ok], dtype=np.int64)
    results = []
    for md in modes_of(mode):
        q = query_vectors(
            engine,
            md,
            template_for(engine, "circo", md, TEMPLATES[md], prompt),
            refs,
            [STYLES[query_style](queries[n]) for n in ok],
        )
        tops = m.top_names(q, g, [str(i) for i in ids], exclude) if ok else []
        preds = {"circo": in_order(ok, tops, len(queries))}
        result = EvalResult("circo", split, md, engine.backbone.id, mapper_name(engine), {}, missing, preds)
        if test:
            out = {str(q["id"]): [int(x) for x in p] for q, p in zip(queries, preds["circo"], strict=True)}
            submission.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            (submission / f"circo-{split}-{md}.json").write_text(json.dumps(out), encoding="utf-8")  # type: ignore[operator]
        elif ok:
            gts = [[str(int(x)) for x in queries[n]["gt_img_ids"]] for n in ok]
            result.metrics = {k: 100 * v for k, v in m.map_at(tops, gts, KS).items()}
            found = [
                t.index(str(int(queries[n]["target_img_id"]))) if str(int(queries[n]["target_img_id"])) in t else len(t)
                for n, t in zip(ok, tops, strict=True)
            ]
            result.metrics.update({k: 100 * v for k, v in m.recall_at(np.array(found), KS).items()})
        results.append(result)
    return results
