"""ImageNet -> ImageNet-R domain conversion (the Pic2Word paper's own benchmark): real ImageNet validation images
are the queries, the gallery is the ImageNet-R images of four domains plus the real queries; prompt ``a {domain} of *``;
a hit is an image of the query's class in the asked domain; R@k = relevant in the top k / all relevant, averaged."""

from __future__ import annotations

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
    mapper_name,
    modes_of,
    query_vectors,
    unit_rows,
)

DOMAINS = ("cartoon", "origami", "toy", "sculpture")  # label = class + 1000 * index, as the reference's lists
KS = (1, 5, 10, 50, 100, 200)
QUERY_LIST, TARGET_LIST = "imgnet_real_query.txt", "imgnet_targets.txt"


def read_list(path: Path) -> list[tuple[str, int]]:
    """The reference's list files: ``relative/path label`` a line."""
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(r[0], int(r[1])) for r in rows]
    except (OSError, ValueError, IndexError) as exc:
        raise P2WError(f"cannot read {path}: {exc}") from exc


def plain_layout(data: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``real/<wnid>/*`` and ``imagenet-r/<wnid>/<domain>_*`` under ``data``: classes numbered by sorted wnid."""
    wnids = sorted(p.name for p in (data / "real").iterdir() if p.is_dir())
    cls = {w: i for i, w in enumerate(wnids)}
    queries = [(str(p.relative_to(data)), cls[w]) for w in wnids for p in sorted((data / "real" / w).iterdir())]
    targets = [(q, 6000 + c) for q, c in queries]  # the real images are distractors, as in the reference's list
    for w in wnids:
        for p in sorted((data / "imagenet-r" / w).glob("*")) if (data / "imagenet-r" / w).is_dir() else []:
            domain = p.name.split("_")[0]
            if domain in DOMAINS:
                targets.append((str(p.relative_to(data)), cls[w] + 1000 * DOMAINS.index(domain)))
    return queries, targets


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` has neither layout."""
    if not (data / QUERY_LIST).is_file() and not (data / "real").is_dir():
        raise P2WError(f"{data} has neither {QUERY_LIST}/{TARGET_LIST} nor real/ and imagenet-r/ folders")


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
) -> list[EvalResult]:
    """One ``EvalResult`` per mode, metrics per domain plus ``average``."""
    if (data / QUERY_LIST).is_file():
        queries, targets = read_list(data / QUERY_LIST), read_list(data / TARGET_LIST)
    elif (data / "real").is_dir():
        queries, targets = plain_layout(data)
    else:
        raise P2WError(f"{data} has neither {QUERY_LIST}/{TARGET_LIST} nor real/ and imagenet-r/ folders")
    feats = image_features(engine, [data / p for p, _ in [*queries, *targets]], home, workers, batch_size, progress)
    gallery = [(p, lab) for p, lab in targets if str(data / p) in feats]
    ok = [(p, lab) for p, lab in queries if str(data / p) in feats]
    missing = {"gallery_images": len(targets) - len(gallery), "queries": len(queries) - len(ok)}
    check_missing(f"ImageNet-R under {data}", missing, strict)
    g = unit_rows([feats[str(data / p)] for p, _ in gallery], engine.backbone.embed_dim)
    g_labels = np.array([lab for _, lab in gallery], dtype=np.int64)
    refs = np.stack([feats[str(data / p)] for p, _ in ok]) if ok else None
    names = [p for p, _ in gallery]
    results = []
    for md in modes_of(mode):
        result = EvalResult("imagenet-r", split, md, engine.backbone.id, mapper_name(engine), {}, missing)
        for d, domain in enumerate(DOMAINS):
            template = f"a {domain} of *" if md == "pic2word" else f"a {domain} of"
            q = query_vectors(engine, md, template, refs, [None] * len(ok)) if ok else np.zeros((0, g.shape[1]))
            labels = np.array([lab + 1000 * d for _, lab in ok], dtype=np.int64)
            got = m.domain_metrics(q, g, labels, g_labels, KS) if ok else {}
            result.metrics[domain] = {k: 100 * v for k, v in got.items() if k.startswith("R@")}
            result.predictions[domain] = m.top_names(q, g, names) if ok else []
        keys = list(result.metrics[DOMAINS[0]])
        result.metrics["average"] = {k: float(np.mean([result.metrics[d][k] for d in DOMAINS])) for k in keys}
        results.append(result)
    return results
