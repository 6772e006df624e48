"""ImageNet -> ImageNet-R domain conversion (the Pic2Word paper's own benchmark): real ImageNet validation images
are the queries, the gallery is the ImageNet-R images of four domains plus the real queries; prompt ``a {domain} of *``;
a hit is an image of the query's class in the asked domain; R@k = relevant in the top k / all relevant, averaged."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from p2w.core.compose import MAPPED, MODES
from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.evaluation import metrics as m
from p2w.evaluation.common import EvalResult, Progress, check_missing, image_vectors, percent
from p2w.evaluation.driver import Query, QuerySet, Rules, query_set, run

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
    alpha: float | None = None,
    alpha_sweep: bool = False,
    split: str = "val",
    strict: bool = False,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode, metrics per domain plus ``average``."""
    queries, targets = _lists(data)
    paths = {p: data / p for p, _ in [*queries, *targets]}
    images = image_vectors(engine, paths, home, workers, batch_size, progress)
    described = [Query(p, truth=label) for p, label in queries]
    qs = query_set("", {}, images, [p for p, _ in targets], described, engine.backbone.embed_dim)
    check_missing(f"ImageNet-R under {data}", qs.missing, strict)
    labels = np.array([label for p, label in targets if p in images], dtype=np.int64)  # (G,) of qs.gallery
    sets = [replace(qs, name=d, templates=_templates(d)) for d in DOMAINS]
    return run(
        engine,
        Rules("imagenet-r", partial(_score, labels), grouped=True, average=True),
        split,
        mode,
        sets,
        alpha=alpha,
        sweep=alpha_sweep,
    )


def _lists(data: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The queries and targets, ``(relative path, label)``, of either layout."""
    if (data / QUERY_LIST).is_file():
        return read_list(data / QUERY_LIST), read_list(data / TARGET_LIST)
    if (data / "real").is_dir():
        return plain_layout(data)
    raise P2WError(f"{data} has neither {QUERY_LIST}/{TARGET_LIST} nor real/ and imagenet-r/ folders")


def _templates(domain: str) -> dict[str, str]:
    """``a {domain} of *``; the baselines read ``a {domain} of`` (the reference's prompt with ``*`` removed)."""
    return {md: f"a {domain} of *" if md in MAPPED else f"a {domain} of" for md in MODES}


def _score(gallery_labels: np.ndarray, scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """R@1/5/10/50/100/200 of images of the query's class in the set's domain, in percent (none without queries)."""
    if not qs.rows:
        return {}
    labels = np.array(qs.truths(), dtype=np.int64) + 1000 * DOMAINS.index(qs.name)
    got = m.domain_metrics_in(scores, labels, gallery_labels, KS)
    return percent({k: v for k, v in got.items() if k.startswith("R@")})
