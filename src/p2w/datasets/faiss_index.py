"""A FAISS index over a layout (``p2w.core.layout``): ``DIR/image.index``, clip-retrieval's file name, so its back end
serves p2w's indexes and p2w searches theirs.

The index type follows autofaiss's rule, with fewer lists (``choose_key``), the vectors are read from the
memory-mapped npy files in chunks (a training sample, then the adds: never the whole matrix in RAM), the search
breadth (``nprobe``) is the smallest that reaches ``TARGET_RECALL`` at 10 after re-ranking with the exact vectors,
measured on held-out rows against exact search, and set in the file. ``DIR/index.json`` records what was built: the
key, the breadth, the recall, and the layout's vector files (size, mtime) at build time, so a layout that changed
afterwards is noticed. A build writes under a fresh name and renames; ``index.json`` lists the old and the new file
while the rename happens, so ``kill -9`` at any moment leaves an index that opens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2w.atomic import atomic_path
from p2w.core import layout
from p2w.core.lock import writer_lock
from p2w.datasets.cluster import check_address
from p2w.datasets.hit_metadata import write_arrow
from p2w.datasets.index_on_ray import CHUNK, fill_on_ray
from p2w.errors import P2WError
from p2w.progress import Progress

FAISS_HINT = "FAISS indexes need faiss: pip install 'p2w[faiss]' (faiss-cpu; faiss-gpu where you have it)"
INDEX = "image.index"
INFO = "index.json"
FORMAT = "p2w-faiss-index"
TARGET_RECALL = 0.95  # recall@10 after re-ranking that the search breadth is chosen to reach
PLATEAU = 0.005  # a doubled search breadth that gains less recall than this is not taken
RERANK = 100  # candidates re-ranked with their exact vectors (at least 10 x k)
FLAT_BELOW = 100_000  # exact search below this many rows (a 512-d scan of 100,000 rows: a few ms)
PQ_SIZES = (64, 48, 32, 24, 16, 8)  # bytes per vector, the largest that fits the budget first
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def faiss_module() -> Any:
    """``faiss``, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise P2WError(FAISS_HINT) from exc
    return faiss


def parse_memory(text: str) -> int:
    """Bytes of ``"4G"``, ``"512M"``, ``"16GB"`` or ``"1000000"`` (powers of 1024, as autofaiss reads them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text.upper())
    if match is None:
        raise P2WError(f"cannot read the memory size {text!r}; write e.g. 4G, 512M or 16GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def lists_for(rows: int) -> int:
    """IVF lists for ``rows`` vectors: the power of two at or below 4 sqrt(rows), at most 2^18. FAISS's guideline is
    4 to 16 sqrt(rows) (autofaiss takes about 4 sqrt(rows) below a million rows, then 16,384 and more); training costs
    rows x lists, so the low end keeps a ten-million-row build's training within minutes on a small machine, and
    product-quantised lists stay cheap to scan."""
    return max(1, min(1 << 18, 1 << int(math.log2(max(1.0, 4 * math.sqrt(rows))))))


def choose_key(rows: int, dim: int, budget: int) -> str:
    """The FAISS factory string for ``rows`` unit vectors of ``dim`` within ``budget`` bytes of index, e.g.
    ``choose_key(10**7, 512, 4 << 30) == "OPQ64_512,IVF8192_HNSW32,PQ64x8"``.

    Exact (``Flat``) below ``FLAT_BELOW`` rows; an IVF with exact vectors in its lists below a million rows when they
    fit the budget; else OPQ-rotated product-quantised codes in an IVF with an HNSW coarse quantizer, the largest code
    of ``PQ_SIZES`` that fits (autofaiss's rule, capped at 64 bytes: the top candidates are re-ranked with their
    exact vectors, so the codes only have to bring the true neighbours into the candidates).
    """
    if rows < FLAT_BELOW:
        return "Flat"
    lists = lists_for(rows)
    if rows < 1_000_000 and rows * dim * 4 + lists * dim * 4 <= budget:
        return f"IVF{lists},Flat"
    quantizer = f"IVF{lists}_HNSW32" if lists >= 1000 else f"IVF{lists}"
    for m in (m for m in PQ_SIZES if dim % m == 0 and m < dim):
        size = rows * (m + 8) + lists * dim * 4 + lists * 32 * 8 + dim * dim * 4
        if size <= budget:
            return f"OPQ{m}_{dim},{quantizer},PQ{m}x8"
    raise P2WError(f"{rows:,} vectors do not fit an index of {budget:,} bytes (8-byte codes need "
                   f"{rows * 16:,}); give --max-memory more")  # fmt: skip


@dataclass(frozen=True)
class Built:
    """One index file as built: its size and mtime (which file ``image.index`` is), key, breadth, recall."""

    size: int
    mtime_ns: int
    key: str
    params: str  # FAISS ParameterSpace string, e.g. "nprobe=32,efSearch=64"
    recall_at_10: float | None  # after re-ranking, on held-out rows against exact search (None: too few rows)
    rows: int
    seconds: float
    vectors: list[dict[str, Any]]  # the layout's img_emb files it was built from: {"name", "size", "mtime_ns"}
    metadata: dict[str, int] | None = None  # its index_metadata.arrow: {"size", "mtime_ns"}


@dataclass(frozen=True)
class IndexInfo:
    """``DIR/index.json``: the builds that ``image.index`` may be (one; two while a new one is renamed into place)
    and the backbone (None for another tool's layout)."""

    builds: list[Built]
    backbone: str | None
    dim: int
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, folder: Path) -> IndexInfo | None:
        path = folder / INFO
        try:
            data = layout.read_record(path, FORMAT)
            if data is None:
                return None
            return cls([Built(**b) for b in data["builds"]], data.get("backbone"), int(data["dim"]))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise P2WError(f"{path} is not a p2w index record ({exc}); build again with: p2w index --embeddings "
                           f"{folder}") from exc  # fmt: skip

    def write(self, folder: Path) -> None:
        with atomic_path(folder / INFO) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")

    def current(self, folder: Path) -> Built | None:
        """The build ``image.index`` is now (matched by size and mtime), None when it is none of them."""
        try:
            st = (folder / INDEX).stat()
        except OSError:
            return None
        return next((b for b in self.builds if (b.size, b.mtime_ns) == (st.st_size, st.st_mtime_ns)), None)


def vector_facts(folder: Path) -> list[dict[str, Any]]:
    """Name, size and mtime of each of the layout's vector files: what a build depends on."""
    out = []
    for path in layout.vector_files(folder):
        st = path.stat()
        out.append({"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


@dataclass
class Rows:
    """The layout's vectors, memory-mapped, addressed by global row (FAISS id i is row i across the sorted files, as
    clip-retrieval and autofaiss number them)."""

    maps: list[np.ndarray]
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.starts = np.cumsum([0] + [len(m) for m in self.maps]).astype(np.int64)

    @classmethod
    def of(cls, folder: Path) -> Rows:
        maps = []
        for path in layout.vector_files(folder):
            try:
                maps.append(np.load(path, mmap_mode="r"))
            except (OSError, ValueError) as exc:
                raise P2WError(f"cannot read {path} ({exc}); make the layout again with: p2w embed dataset") from exc
        dims = {m.shape[1] if m.ndim == 2 else -1 for m in maps}
        if len(dims) != 1 or -1 in dims:
            raise P2WError(f"the vector files under {folder / 'img_emb'} do not share one 2-d shape")
        return cls(maps)

    @property
    def count(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return int(self.maps[0].shape[1])

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as float32 ``(len(ids), dim)``, reading only those rows."""
        ids = np.asarray(ids, dtype=np.int64)
        which = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for f in np.unique(which):
            at = which == f
            out[at] = self.maps[f][ids[at] - self.starts[f]]
        return out

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 rows)`` over every row in order, ``size`` at a time."""
        for start, m in zip(self.starts[:-1], self.maps, strict=True):
            for lo in range(0, len(m), size):
                yield int(start) + lo, np.ascontiguousarray(m[lo : lo + size], dtype=np.float32)


def exact_top(rows: Rows, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of each query's ``k`` best rows by inner product, over every row (streamed; the ground truth)."""
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start, block in rows.chunks():
        scores = queries @ block.T
        ids = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        both = np.concatenate([best, scores], axis=1)
        both_ids = np.concatenate([best_ids, ids], axis=1)
        top = np.argpartition(-both, min(k, both.shape[1] - 1), axis=1)[:, :k]
        best, best_ids = np.take_along_axis(both, top, 1), np.take_along_axis(both_ids, top, 1)
    order = np.argsort(-best, axis=1)
    return np.take_along_axis(best_ids, order, 1)


def rerank(rows: Rows, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of candidate ``ids`` by their exact vectors' inner product with ``query``."""
    ids = ids[ids >= 0]
    scores = rows.get(ids) @ query.astype(np.float32)
    top = np.argsort(-scores, kind="stable")[:k]
    return ids[top], scores[top]


def build_index(
    folder: Path,
    budget: int = 4 << 30,
    key: str | None = None,
    progress: Progress | None = None,
    queries: int = 200,
    ray: str | None = None,
) -> Built:
    """Build ``folder/image.index`` over the layout in ``folder`` and record it in ``index.json``, e.g.
    ``build_index(Path("emb"), parse_memory("4G"))``. ``key`` forces a FAISS factory string; ``queries`` held-out
    rows measure the recall at 10 (and choose the search breadth); ``ray``: a Ray address (``local``, ``auto``,
    ``ray://HOST:PORT``) whose tasks fill an IVF index (``p2w.datasets.index_on_ray``). One build of a folder at a
    time (its ``lock``); what a build killed before left behind (``.image.index.*.tmp``) is removed first. The hits'
    metadata is also written as ``index_metadata.arrow`` (``p2w.datasets.hit_metadata``)."""
    faiss = faiss_module()
    if ray is not None:
        check_address(ray)
    start = time.perf_counter()
    rows = Rows.of(folder)
    key = key or choose_key(rows.count, rows.dim, budget)
    with writer_lock(folder, "the index"):
        for stale in (*folder.glob(f".{INDEX}.*.tmp"), *folder.glob(".index_metadata.arrow.*.tmp")):
            stale.unlink(missing_ok=True)
        index = _filled(faiss, key, rows, progress, (folder, ray) if ray else None)
        params, recall = _tune(faiss, index, rows, np.random.default_rng(1), queries)
        if progress:
            progress("metadata", 0, rows.count)
        arrow = write_arrow(folder, layout.vector_files(folder))  # a hit's metadata by row
        seconds = round(time.perf_counter() - start, 2)
        built = Built(0, 0, key, params, recall, rows.count, seconds, vector_facts(folder), arrow)
        return _commit(faiss, index, folder, built)


def _filled(faiss: Any, key: str, rows: Rows, progress: Progress | None, ray: tuple[Path, str] | None) -> Any:
    """An index of ``key``, trained on a sample where it needs training, holding every row (added in chunks here,
    or by Ray tasks, a vector file each, when ``ray`` is (the layout's folder, an address) and the index is an IVF)."""
    try:
        index = faiss.index_factory(rows.dim, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise P2WError(f"FAISS cannot make an index of {key!r}: {str(exc).splitlines()[-1]}") from exc
    ivf = _ivf(index)
    concrete: Any = faiss.downcast_index(ivf) if ivf is not None else None
    if hasattr(concrete, "do_polysemous_training"):
        # the factory's IVF-PQ trains polysemous codes (minutes of simulated annealing) for a Hamming filter that
        # p2w's searches do not use (nor autofaiss's, whose ht=2048 turns it off)
        concrete.do_polysemous_training = False
    if not index.is_trained:
        _train(index, rows, np.random.default_rng(0), progress)
    if ray is not None and ivf is not None:
        return fill_on_ray(faiss, index, layout.vector_files(ray[0]), rows.starts[:-1], ray[1], progress)
    for first, block in rows.chunks():
        index.add(block)
        if progress:
            progress("adding", first + len(block), rows.count)
    return index


def _commit(faiss: Any, index: Any, folder: Path, built: Built) -> Built:
    """Write the index under a fresh name, record it beside the build ``image.index`` is now, rename it into
    place, then record it alone: whenever this stops, ``image.index`` is a build ``index.json`` lists."""
    manifest = layout.Manifest.read(folder)
    backbone = manifest.backbone if manifest is not None else None
    old = IndexInfo.read(folder)
    keep = [b for b in (old.current(folder),) if b is not None] if old is not None else []
    with atomic_path(folder / INDEX) as tmp:
        faiss.write_index(index, str(tmp))
        st = tmp.stat()
        built = dataclasses.replace(built, size=st.st_size, mtime_ns=st.st_mtime_ns)
        IndexInfo([*keep, built], backbone, built_dim(index)).write(folder)
    IndexInfo([built], backbone, built_dim(index)).write(folder)
    return built


def built_dim(index: Any) -> int:
    return int(index.d)


def _train(index: Any, rows: Rows, rng: np.random.Generator, progress: Progress | None) -> None:
    """Train on a random sample: 40 rows a list (FAISS warns below 39), at least 65,536 where there are."""
    lists = int(getattr(_ivf(index), "nlist", 1))
    size = min(rows.count, max(40 * lists, 65_536))
    sample = np.sort(rng.choice(rows.count, size=size, replace=False))
    if progress:
        progress("training", 0, size)
    index.train(np.concatenate([rows.get(sample[lo : lo + CHUNK]) for lo in range(0, size, CHUNK)]))


def _ivf(index: Any) -> Any:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _tune(faiss: Any, index: Any, rows: Rows, rng: np.random.Generator, queries: int) -> tuple[str, float | None]:
    """The smallest search breadth whose recall at 10 (re-ranked, held-out rows: each query's own row left out)
    reaches ``TARGET_RECALL``, or past which doubling it gains less than ``PLATEAU`` (the codes, not the breadth,
    then limit the recall), set on ``index``; with the recall it reached. Exact indexes need no breadth."""
    if rows.count < 11 + queries // 10:
        return "", None
    picked = rng.choice(rows.count, size=min(queries, rows.count), replace=False)
    q = rows.get(picked)
    truth = exact_top(rows, q, 11)
    ivf = _ivf(index)
    if ivf is None:
        return "", _recall(index, rows, q, picked, truth)
    hnsw = "HNSW" in type(faiss.downcast_index(ivf.quantizer)).__name__
    space = faiss.ParameterSpace()
    best = ("", -1.0)
    for nprobe in sorted({min(1 << i, ivf.nlist) for i in range(ivf.nlist.bit_length() + 1)}):
        params = f"nprobe={nprobe}" + (f",efSearch={max(16, 2 * nprobe)}" if hnsw else "")
        space.set_index_parameters(index, params)
        recall = _recall(index, rows, q, picked, truth)
        if recall < best[1] + PLATEAU:
            break  # no longer worth its time: the previous breadth
        best = (params, recall)
        if recall >= TARGET_RECALL:
            break
    space.set_index_parameters(index, best[0])
    return best


def _recall(index: Any, rows: Rows, q: np.ndarray, own: np.ndarray, truth: np.ndarray) -> float:
    """Recall at 10 of re-ranked search against ``truth``, each query's own row left out of both."""
    _, found = index.search(q, RERANK + 1)
    hits = 0
    for i, query in enumerate(q):
        ids, _ = rerank(rows, query, found[i], 11)
        mine = [x for x in ids.tolist() if x != own[i]][:10]
        right = [x for x in truth[i].tolist() if x != own[i]][:10]
        hits += len(set(mine) & set(right))
    return hits / (10 * len(q))
