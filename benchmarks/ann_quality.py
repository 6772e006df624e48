"""Recall@10 and query time of p2w's hnswlib index (its M, ef_construction, ef) on random unit vectors.

    python benchmarks/ann_quality.py --n 100000 --dim 768 --queries 1000
    python benchmarks/ann_quality.py --vectors micro.npz     # real embeddings (benchmarks/micro_embeddings.py)

Random high-dimensional vectors are the hard case for HNSW (real CLIP embeddings cluster); exact top-10 by brute
force is the reference. Query time: one query per call, one thread, as `p2w search` does.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import hnswlib
import numpy as np

from p2w import ann


def unit(rng: np.random.Generator, n: int, dim: int, basis: np.ndarray | None = None) -> np.ndarray:
    """Random unit vectors; with ``basis`` (intrinsic_dim, dim), on that subspace plus 5% isotropic noise."""
    if basis is None:
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        x = rng.standard_normal((n, basis.shape[0]), dtype=np.float32) @ basis
        scale = 0.05 * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim)
        x += scale * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(0, len(queries), 100):
        sims = queries[i : i + 100] @ data.T
        out.append(np.argsort(-sims, axis=1)[:, :k])
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, nargs="*", default=[100, ann.EF_SEARCH, 400])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for building")
    ap.add_argument("--intrinsic", type=int, default=0, help="vectors on a random subspace of this dimension")
    ap.add_argument("--vectors", default=None, help=".npz with unit 'data' and 'queries' (overrides --n/--dim)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.vectors:
        with np.load(args.vectors) as f:
            data, queries = f["data"].astype(np.float32), f["queries"][: args.queries].astype(np.float32)
        args.n, args.dim = data.shape
    else:
        basis = rng.standard_normal((args.intrinsic, args.dim), dtype=np.float32) if args.intrinsic else None
        data, queries = unit(rng, args.n, args.dim, basis), unit(rng, args.queries, args.dim, basis)
    index = hnswlib.Index(space="ip", dim=args.dim)
    index.init_index(max_elements=args.n, ef_construction=ann.EF_CONSTRUCTION, M=ann.M)
    index.set_num_threads(args.threads)
    start = time.perf_counter()
    index.add_items(data, np.arange(args.n))
    build = time.perf_counter() - start
    truth = exact_top(data, queries, 10)
    index.set_num_threads(1)
    rows = []
    for ef in args.ef:
        index.set_ef(ef)
        found, times = [], []
        for q in queries:
            t = time.perf_counter()
            labels, _ = index.knn_query(q[None], k=10)
            times.append(time.perf_counter() - t)
            found.append(labels[0])
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        ms = np.array(times) * 1000
        rows.append(
            {
                "ef": ef,
                "recall@10": round(float(recall), 4),
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
            }
        )
    start = time.perf_counter()
    for q in queries[:100]:
        np.argsort(-(data @ q))[:10]
    exact_ms = (time.perf_counter() - start) * 10
    print(
        json.dumps(
            {
                "n": args.n,
                "vectors": args.vectors or ("structured" if args.intrinsic else "random"),
                "intrinsic": args.intrinsic,
                "exact_numpy_ms_per_query": round(exact_ms, 2),
                "dim": args.dim,
                "M": ann.M,
                "ef_construction": ann.EF_CONSTRUCTION,
                "build_seconds": round(build, 1),
                "build_threads": args.threads,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
