"""The approximate-nearest-neighbour index (hnswlib, inner product on unit vectors = cosine), derived from the catalog.

Files in the catalog folder:

- ``index.json``, the commit record: the catalog generation the index reflects, its parameters, and the names of
  the two files below. It is written last (temporary name, then rename), so a reader sees a complete set of files,
  old or new, never a mix; files it does not name are removed after each save.
- ``index-<id>.hnsw``, the hnswlib graph.
- ``projection-<id>.npy``, only for large catalogs of wide vectors: the graph then holds the vectors projected on
  their principal subspace (the smallest multiple of 16 dimensions keeping ``REDUCE_ENERGY`` of their squared
  norm), which makes each distance several times cheaper; the best ``CANDIDATES`` it finds are re-ranked with the
  exact full vectors read from the catalog, so scores are exact cosines. The basis is refitted (the index rebuilt)
  when the catalog has doubled since, or when new vectors stray from it.

A missing, unreadable or stale set of files is rebuilt from SQLite, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from p2w.atomic import atomic_path
from p2w.core.lock import writer_lock
from p2w.errors import P2WError
from p2w.library.catalog import Catalog

log = logging.getLogger(__name__)

M = 32
EF_CONSTRUCTION = 200
EF_SEARCH = 150  # at 768-d; hnswlib does not save ef: it is set at every query (see docs/performance.md)
EF_MAX = 400
REBUILD_DELETED_FRACTION = 0.2

# the reduced graph (see the module's docstring and docs/performance.md)
REDUCE_MIN_DIM = 256  # narrower vectors are cheap enough as they are
REDUCE_MIN_COUNT = 20_000  # smaller catalogs are searched in well under a millisecond anyway
REDUCE_ENERGY = 0.99  # share of the squared norm the projection keeps, on average
REDUCE_STRAY = 0.02  # refit when a run's new vectors keep less than REDUCE_ENERGY minus this
FIT_SAMPLE = 100_000  # vectors the basis is fitted on
CANDIDATES = 64  # found in the reduced graph, then re-ranked exactly

SIDECAR = "index.json"
_OWN_FILE = re.compile(r"(index-[0-9a-f]{32}\.hnsw|projection-[0-9a-f]{32}\.npy|index\.hnsw)")

Fetch = Callable[[Sequence[int]], dict[int, bytes]]


def matrix(found: dict[int, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and float32 vectors (one row each) of a catalog's ``{id: vector bytes}``, in the dict's order."""
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    return ids, np.frombuffer(b"".join(found.values()), dtype=np.float32).reshape(len(found), -1)


def default_ef(dim: int) -> int:
    """Search breadth for ``dim``-d vectors: 150 at 768-d (ViT-L-14), wider for cheaper, smaller vectors at about
    the same time a query (a distance costs ~dim), at most 400: 225 at 512-d, 400 at 128-d (measured: recall@10 0.977
    at 150 and 0.992 at 400 on the micro model's composed queries)."""
    return max(EF_SEARCH, min(EF_MAX, round(EF_SEARCH * 768 / max(dim, 1))))


@dataclass(frozen=True)
class Projection:
    """An orthonormal basis (``dim`` x ``r``) of the catalog's principal subspace."""

    basis: np.ndarray  # float32, orthonormal columns
    energy: float  # mean share of the fitted vectors' squared norm it keeps
    name: str  # file id

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors @ self.basis, dtype=np.float32)

    def kept(self, vectors: np.ndarray) -> float:
        """Mean share of the vectors' squared norm inside the subspace."""
        inside = (self.apply(vectors) ** 2).sum(axis=1)
        return float(np.mean(inside / np.maximum((vectors**2).sum(axis=1), 1e-12)))


def may_reduce(dim: int, count: int) -> bool:
    """Whether a catalog of ``count`` ``dim``-d vectors is wide and large enough for a reduced graph to pay."""
    return dim >= REDUCE_MIN_DIM and count >= REDUCE_MIN_COUNT


def fit_projection(sample: np.ndarray) -> Projection | None:
    """The basis fitted on ``sample`` (n x dim); None where the spectrum is so flat that more than half the
    dimensions are needed (or the sample has fewer rows than dimensions)."""
    dim = sample.shape[1]
    if len(sample) < dim:
        return None
    x = sample.astype(np.float64)
    values, vectors = np.linalg.eigh(x.T @ x / len(x))  # uncentred: inner products are what must survive
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    share = np.cumsum(values) / max(values.sum(), 1e-12)
    r = int(np.searchsorted(share, REDUCE_ENERGY) + 1)
    r = min(dim, -(-r // 16) * 16)  # a multiple of 16, for hnswlib's SIMD distance
    if r > dim // 2:
        return None
    return Projection(vectors[:, :r].astype(np.float32), float(share[r - 1]), uuid.uuid4().hex)


@dataclass
class Ann:
    """A loaded index, the catalog generation it reflects, and how to read full vectors for re-ranking."""

    index: Any  # hnswlib.Index
    generation: int
    live: int  # elements not marked deleted
    projection: Projection | None = None
    fetch: Fetch | None = None  # full vectors by id (the catalog's), needed with a projection
    built: int = 0  # catalog size at the last full build

    def query(
        self, vector: np.ndarray, k: int, ef: int | None = None, allowed: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids and cosine scores of the ``k`` nearest (clamped to the live count); ``ef``: hnswlib's search breadth
        (default ``default_ef`` of the graph's dimension; higher is slower and closer to exact), never below ``k``
        (nor below ``CANDIDATES`` on a reduced graph); ``allowed``: only ids it accepts (hnswlib's filter: the
        graph is walked as usual, and fewer than ``k`` may come back when few pass)."""
        k = min(k, self.live)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.ascontiguousarray(vector, dtype=np.float32)
        if self.projection is None:
            self.index.set_ef(max(ef or default_ef(self.index.dim), k))
            labels, distances = _knn(self.index, q, k, allowed)
            return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
        if self.fetch is None:
            raise ValueError("a reduced index needs the catalog's vectors to re-rank")
        c = min(self.live, max(k, CANDIDATES))
        self.index.set_ef(max(ef or default_ef(self.index.dim), c))
        labels, _ = _knn(self.index, self.projection.apply(q[None])[0], c, allowed)
        found = self.fetch([int(i) for i in labels])
        if not found:  # a filter that nothing the search reached passes
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids, vectors = matrix(found)
        if not len(ids):
            return ids, np.zeros(0, dtype=np.float32)
        scores = vectors @ q
        top = np.argsort(-scores, kind="stable")[:k]
        return ids[top], scores[top].astype(np.float32)

    def neighbours(self, vectors: np.ndarray, k: int, ef: int | None = None) -> np.ndarray:
        """The ids ``(n, k)`` of each vector's ``k`` nearest in the graph as it is (approximate; on a reduced graph,
        by the projected vectors), all queried in one batch on every core; for a caller that scores what it needs."""
        k = min(k, self.live)
        if k <= 0 or not len(vectors):
            return np.zeros((len(vectors), 0), dtype=np.int64)
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.set_ef(max(ef or default_ef(self.index.dim), k))
        labels, _ = self.index.knn_query(q if self.projection is None else self.projection.apply(q), k=k)
        return np.asarray(labels, dtype=np.int64)


def _knn(index: Any, q: np.ndarray, k: int, allowed: Callable[[int], bool] | None) -> tuple[np.ndarray, np.ndarray]:
    """hnswlib's ``k`` nearest of one vector; with a filter that fewer than ``k`` of the ids the search reaches pass,
    none (hnswlib refuses to return a short row): the caller searches the passing ids exactly instead."""
    try:
        labels, distances = index.knn_query(q[None], k=k, filter=allowed)
    except RuntimeError:  # "Cannot return the results in a contiguous 2D array"
        if allowed is None:
            raise
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.float32)
    return labels[0], distances[0]


def files(folder: Path) -> list[Path]:
    """Every ANN file in a catalog folder (the commit record first), current or left over."""
    own = [p for p in folder.iterdir() if _OWN_FILE.fullmatch(p.name)] if folder.is_dir() else []
    return [folder / SIDECAR, *sorted(own)]


def remove(folder: Path) -> None:
    """Remove the index (an empty catalog has none)."""
    for p in files(folder):
        p.unlink(missing_ok=True)


def _record(folder: Path) -> dict[str, Any]:
    """The commit record (raises OSError or ValueError when it is missing or unreadable)."""
    info = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        raise ValueError(f"{folder / SIDECAR} is not a record")
    return info


def is_current(folder: Path, generation: int | str | None) -> bool:
    """Whether the saved index reflects catalog ``generation`` and its graph file is there."""
    try:
        info = _record(folder)
        return str(info["generation"]) == str(generation) and (folder / f"index-{info['index']}.hnsw").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load(catalog: Catalog, save_rebuilt: bool = True) -> Ann:
    """The catalog's ANN: the saved files when they are current, else rebuilt from SQLite and, with
    ``save_rebuilt``, saved when no writer holds the catalog and the folder is writable."""
    saved = _load_saved(catalog)
    if saved is not None:
        return saved
    ann = build(catalog)
    if save_rebuilt:
        try:
            with writer_lock(catalog.folder):
                save(ann, catalog.folder)
        except (OSError, P2WError) as exc:  # a read-only catalog, or an index run that will save its own
            log.info("not saving the rebuilt index in %s: %s", catalog.folder, exc)
    return ann


def _load_saved(catalog: Catalog, attempts: int = 3) -> Ann | None:
    for _ in range(attempts):  # a writer may replace the files between reading the record and opening them
        try:
            return _read(catalog)
        except FileNotFoundError as exc:
            log.info("index files of %s changed while loading: %s", catalog.folder, exc)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.info("rebuilding the index of %s: %s", catalog.folder, exc)
            return None
    return None


def _read(catalog: Catalog) -> Ann | None:
    folder = catalog.folder
    try:
        info = _record(folder)
    except FileNotFoundError:
        return None
    if info["generation"] != catalog.generation or info["dim"] != catalog.dim:
        return None
    projection = None
    if info["projection"] is not None:
        p = info["projection"]
        basis = np.load(folder / f"projection-{p['name']}.npy", allow_pickle=False)
        if basis.shape != (catalog.dim, info["graph_dim"]) or basis.dtype != np.float32:
            raise ValueError(f"projection of shape {basis.shape}, {basis.dtype}")
        projection = Projection(basis, float(p["energy"]), str(p["name"]))
    index_file = folder / f"index-{info['index']}.hnsw"
    if not index_file.is_file():
        raise FileNotFoundError(index_file)
    index = hnswlib.Index(space="ip", dim=int(info["graph_dim"]))
    index.load_index(str(index_file), max_elements=int(info["elements"]))
    index.set_ef(EF_SEARCH)
    return Ann(index, int(info["generation"]), int(info["live"]), projection, catalog.vectors_for, int(info["built"]))


def _chunks(rows: Iterator[tuple[int, bytes]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    found: dict[int, bytes] = {}
    for i, blob in rows:
        found[i] = blob
        if len(found) >= size:
            yield matrix(found)
            found = {}
    if found:
        yield matrix(found)


def _fit(catalog: Catalog, count: int) -> Projection | None:
    if not may_reduce(catalog.dim, count):
        return None
    ids = np.asarray(catalog.ids())
    pick = np.sort(np.random.default_rng(0).choice(ids, min(FIT_SAMPLE, len(ids)), replace=False))
    return fit_projection(matrix(catalog.vectors_for([int(i) for i in pick]))[1])


def build(catalog: Catalog, batch: int = 50_000) -> Ann:
    """A fresh index of every vector in the catalog (reduced when that pays, see ``fit_projection``), read in one
    snapshot: the row count, the vectors and the generation it is labelled with are those of one committed state,
    whatever an index run commits meanwhile."""
    with catalog.snapshot():
        count = catalog.count()
        projection = _fit(catalog, count)
        graph_dim = projection.dim if projection is not None else max(catalog.dim, 1)
        index = hnswlib.Index(space="ip", dim=graph_dim)
        index.init_index(max_elements=max(count, 1), ef_construction=EF_CONSTRUCTION, M=M)
        for ids, vectors in _chunks(catalog.all_vectors(), batch):
            index.add_items(vectors if projection is None else projection.apply(vectors), ids)
        generation = catalog.generation
    index.set_ef(EF_SEARCH)
    return Ann(index, generation, count, projection, catalog.vectors_for, count)


def update(ann: Ann, added_ids: Sequence[int], removed: Sequence[int], catalog: Catalog, chunk: int = 20_000) -> Ann:
    """Apply a run's additions (read from the catalog in chunks) and removals; rebuild instead when many labels are
    dead, when a catalog that may be reduced has doubled since the last build, or when the new vectors stray from
    the projection."""
    dead = ann.index.element_count - ann.live + len(removed)
    if dead > REBUILD_DELETED_FRACTION * max(1, ann.index.element_count + len(added_ids)):
        return build(catalog)
    count = catalog.count()
    if may_reduce(catalog.dim, count) and count > 2 * ann.built:
        return build(catalog)
    for label in removed:
        try:
            ann.index.mark_deleted(int(label))
        except RuntimeError:  # already marked
            dead -= 1
    need = ann.index.element_count + len(added_ids)
    if need > ann.index.get_max_elements():
        ann.index.resize_index(max(need, int(ann.index.get_max_elements() * 1.5)))
    kept, n = 0.0, 0
    for i in range(0, len(added_ids), chunk):
        ids, vectors = matrix(catalog.vectors_for(list(added_ids[i : i + chunk])))
        if ann.projection is not None:
            kept += ann.projection.kept(vectors) * len(ids)
            n += len(ids)
            vectors = ann.projection.apply(vectors)
        ann.index.add_items(vectors, ids)
    if n and kept / n < REDUCE_ENERGY - REDUCE_STRAY:
        log.info("new vectors keep %.3f of their norm in the projection: refitting", kept / n)
        return build(catalog)
    return Ann(ann.index, catalog.generation, ann.index.element_count - dead, ann.projection, ann.fetch, ann.built)


def save(ann: Ann, folder: Path) -> None:
    """Write the graph and projection under fresh names, then the commit record naming them; then remove the files
    it no longer names."""
    name = uuid.uuid4().hex
    with atomic_path(folder / f"index-{name}.hnsw") as tmp:
        ann.index.save_index(str(tmp))
    projection = None
    if ann.projection is not None:
        p = ann.projection
        target = folder / f"projection-{p.name}.npy"
        if not target.is_file():
            with atomic_path(target) as tmp, tmp.open("wb") as f:
                np.save(f, p.basis, allow_pickle=False)
        projection = {"name": p.name, "energy": p.energy}
    info = {
        "generation": ann.generation,
        "dim": ann.index.dim if ann.projection is None else int(ann.projection.basis.shape[0]),
        "graph_dim": ann.index.dim,
        "elements": ann.index.get_max_elements(),
        "live": ann.live,
        "built": ann.built,
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
        "index": name,
        "projection": projection,
    }
    with atomic_path(folder / SIDECAR) as tmp:
        tmp.write_text(json.dumps(info), encoding="utf-8")
    keep = {f"index-{name}.hnsw"} | ({f"projection-{ann.projection.name}.npy"} if ann.projection else set())
    for old in files(folder)[1:]:
        if old.name not in keep:
            with contextlib.suppress(OSError):
                old.unlink()
