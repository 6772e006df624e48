"""The approximate-nearest-neighbour index (hnswlib, inner product on unit vectors = cosine), derived from the catalog.

It lives in ``index.hnsw`` with a sidecar ``index.json`` naming the catalog generation it was built from. Both are
written to temporary names and renamed; a missing, unreadable or stale file is rebuilt from SQLite, never trusted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from p2w.atomic import atomic_path
from p2w.catalog import Catalog

log = logging.getLogger(__name__)

M = 32
EF_CONSTRUCTION = 200
EF_SEARCH = 150  # at 768-d; hnswlib does not save ef: it is set at every query (see docs/performance.md)
EF_MAX = 400


def default_ef(dim: int) -> int:
    """Search breadth for ``dim``-d vectors: 150 at 768-d (ViT-L-14), wider for cheaper, smaller vectors at about
    the same time a query (a distance costs ~dim), at most 400: 225 at 512-d, 400 at 128-d (measured: recall@10 0.977
    at 150 and 0.992 at 400 on the micro model's composed queries)."""
    return max(EF_SEARCH, min(EF_MAX, round(EF_SEARCH * 768 / max(dim, 1))))


REBUILD_DELETED_FRACTION = 0.2


@dataclass
class Ann:
    """A loaded index and the catalog generation it reflects."""

    index: Any  # hnswlib.Index
    generation: int
    live: int  # elements not marked deleted

    def query(self, vector: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and cosine scores of the ``k`` nearest (clamped to the live count); ``ef``: hnswlib's search breadth
        (default ``default_ef(dim)``; higher is slower and closer to exact), never below ``k``."""
        k = min(k, self.live)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        self.index.set_ef(max(ef or default_ef(self.index.dim), k))
        labels, distances = self.index.knn_query(vector[None].astype(np.float32), k=k)
        return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)


def paths(folder: Path) -> tuple[Path, Path]:
    """The index file and its sidecar."""
    return folder / "index.hnsw", folder / "index.json"


def load(catalog: Catalog) -> Ann:
    """The catalog's ANN: the saved file when it is current, else rebuilt from SQLite (and saved when possible)."""
    saved = _load_saved(catalog)
    if saved is not None:
        return saved
    ann = build(catalog)
    try:
        save(ann, catalog.folder)
    except OSError as exc:  # a read-only catalog can still be searched
        log.info("cannot save the rebuilt index in %s: %s", catalog.folder, exc)
    return ann


def _load_saved(catalog: Catalog) -> Ann | None:
    index_file, sidecar = paths(catalog.folder)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if info["generation"] != catalog.generation or info["dim"] != catalog.dim or not index_file.is_file():
            return None
        index = hnswlib.Index(space="ip", dim=catalog.dim)
        index.load_index(str(index_file), max_elements=int(info["elements"]))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        log.info("rebuilding the index of %s: %s", catalog.folder, exc)
        return None
    index.set_ef(EF_SEARCH)
    return Ann(index, int(info["generation"]), int(info["live"]))


def build(catalog: Catalog, batch: int = 50_000) -> Ann:
    """A fresh index of every vector in the catalog."""
    dim = catalog.dim
    count = catalog.count()
    index = hnswlib.Index(space="ip", dim=max(dim, 1))
    index.init_index(max_elements=max(count, 1), ef_construction=EF_CONSTRUCTION, M=M)
    ids: list[int] = []
    vecs: list[np.ndarray] = []
    for i, blob in catalog.all_vectors():
        ids.append(i)
        vecs.append(np.frombuffer(blob, dtype=np.float32))
        if len(ids) >= batch:
            index.add_items(np.stack(vecs), np.asarray(ids))
            ids, vecs = [], []
    if ids:
        index.add_items(np.stack(vecs), np.asarray(ids))
    index.set_ef(EF_SEARCH)
    return Ann(index, catalog.generation, count)


def update(ann: Ann, added_ids: Sequence[int], removed: Sequence[int], catalog: Catalog, chunk: int = 20_000) -> Ann:
    """Apply a run's additions (read from the catalog in chunks) and removals, or rebuild when many labels are dead."""
    dead = ann.index.element_count - ann.live + len(removed)
    if dead > REBUILD_DELETED_FRACTION * max(1, ann.index.element_count + len(added_ids)):
        return build(catalog)
    for label in removed:
        try:
            ann.index.mark_deleted(int(label))
        except RuntimeError:  # already marked
            dead -= 1
    need = ann.index.element_count + len(added_ids)
    if need > ann.index.get_max_elements():
        ann.index.resize_index(max(need, int(ann.index.get_max_elements() * 1.5)))
    for i in range(0, len(added_ids), chunk):
        vecs = catalog.vectors_for(list(added_ids[i : i + chunk]))
        ids = list(vecs)
        ann.index.add_items(np.stack([np.frombuffer(vecs[j], dtype=np.float32) for j in ids]), np.asarray(ids))
    return Ann(ann.index, catalog.generation, ann.index.element_count - dead)


def save(ann: Ann, folder: Path) -> None:
    """Write the index and then its sidecar, each to a temporary name first."""
    index_file, sidecar = paths(folder)
    with atomic_path(index_file) as tmp:
        ann.index.save_index(str(tmp))
    info = {
        "generation": ann.generation,
        "dim": ann.index.dim,
        "elements": ann.index.get_max_elements(),
        "live": ann.live,
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
    }
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(info), encoding="utf-8")
