"""Recall@10 and query time of p2w's ANN (``p2w.ann`` on a real SQLite catalog, as `p2w search` uses it).

    python benchmarks/ann_quality.py --n 100000 --dim 768 --queries 1000 --intrinsic 32
    python benchmarks/ann_quality.py --n 100000 --dim 768 --queries 1000 --intrinsic 32 --no-reduce
    python benchmarks/ann_quality.py --vectors micro.npz     # real embeddings (benchmarks/micro_embeddings.py)

The vectors are written to a catalog in a temporary folder, the index is built by ``p2w.ann.build`` (reduced when it
decides so; ``--no-reduce`` forbids it, ``--reduce-always`` lifts its size limits), and each query is one
``Ann.query`` call on one thread, as `p2w search` makes it: projection, graph search, reading the candidates' full
vectors from SQLite, exact re-ranking. Exact top-10 by brute force is the reference. Random high-dimensional
vectors are the hard case for any graph index (real CLIP embeddings occupy a low-dimensional part of the space,
which ``--intrinsic`` imitates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from p2w.library import ann
from p2w.library.catalog import Catalog


def unit(rng: np.random.Generator, n: int, dim: int, basis: np.ndarray | None = None) -> np.ndarray:
    """Random unit vectors; with ``basis`` (intrinsic_dim, dim), on that subspace plus 5% isotropic noise."""
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 100_000):  # in slices, so a million 768-d vectors need no temporary copies
        m = min(n, i + 100_000) - i
        if basis is None:
            x = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            x = rng.standard_normal((m, basis.shape[0]), dtype=np.float32) @ basis
            scale = 0.05 * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim)
            x += scale * rng.standard_normal((m, dim), dtype=np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(0, len(queries), 100):
        sims = queries[i : i + 100] @ data.T
        out.append(np.argsort(-sims, axis=1)[:, :k])
    return np.concatenate(out)


def fill(catalog: Catalog, data: np.ndarray) -> None:
    """Rows 1..n of the catalog hold data[0..n-1]."""
    for i in range(0, len(data), 50_000):
        rows = [
            (f"/bench/{j}.jpg", 1, 1, f"{j:064x}", data[j].tobytes(), None)
            for j in range(i, min(len(data), i + 50_000))
        ]
        catalog.put(rows, data.shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, nargs="*", default=None, help="default: p2w's default for the graph")
    ap.add_argument("--intrinsic", type=int, default=0, help="vectors on a random subspace of this dimension")
    ap.add_argument("--vectors", default=None, help=".npz with unit 'data' and 'queries' (overrides --n/--dim)")
    ap.add_argument("--no-reduce", action="store_true", help="index the full vectors (p2w before the reduced graph)")
    ap.add_argument("--reduce-always", action="store_true", help="reduce whatever the width and count, if it pays")
    ap.add_argument("--workdir", default=None, help="where the temporary catalog goes (default: the temp dir)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.vectors:
        with np.load(args.vectors) as f:
            data, queries = f["data"].astype(np.float32), f["queries"][: args.queries].astype(np.float32)
        args.n, args.dim = data.shape
    else:
        basis = rng.standard_normal((args.intrinsic, args.dim), dtype=np.float32) if args.intrinsic else None
        data, queries = unit(rng, args.n, args.dim, basis), unit(rng, args.queries, args.dim, basis)
    if args.no_reduce:
        ann.REDUCE_MIN_DIM = 1 << 30
    if args.reduce_always:
        ann.REDUCE_MIN_DIM = ann.REDUCE_MIN_COUNT = 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        catalog = Catalog(Path(tmp) / "catalog", "bench/none", create=True)
        start = time.perf_counter()
        fill(catalog, data)
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        index = ann.build(catalog)
        build = time.perf_counter() - start
        truth = exact_top(data, queries, 10) + 1  # catalog ids start at 1
        start = time.perf_counter()
        for q in queries[:100]:  # one query at a time, as a search without an index would
            np.argsort(-(data @ q))[:10]
        exact_s = (time.perf_counter() - start) / len(queries[:100])
        index.index.set_num_threads(1)
        for q in queries[:100]:  # warm-up: the first reads of the graph and of SQLite come from disk
            index.query(q, 10)
        rows = []
        for ef in args.ef or [ann.default_ef(index.index.dim)]:
            found, times = [], []
            for q in queries:
                t = time.perf_counter()
                ids, _ = index.query(q, 10, ef=ef)
                times.append(time.perf_counter() - t)
                found.append(ids)
            recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)])
            ms = np.array(times) * 1000
            rows.append(
                {
                    "ef": max(ef, ann.CANDIDATES) if index.projection else ef,
                    "recall@10": round(float(recall), 4),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                }
            )
        catalog.close()
    p = index.projection
    print(
        json.dumps(
            {
                "n": args.n,
                "vectors": args.vectors or ("structured" if args.intrinsic else "random"),
                "intrinsic": args.intrinsic,
                "dim": args.dim,
                "graph_dim": index.index.dim,
                "energy_kept": round(p.energy, 4) if p else None,
                "candidates_reranked": ann.CANDIDATES if p else None,
                "M": ann.M,
                "ef_construction": ann.EF_CONSTRUCTION,
                "catalog_fill_seconds": round(fill_s, 1),
                "build_seconds": round(build, 1),
                "exact_numpy_ms_per_query": round(exact_s * 1000, 2),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
