"""Latency of a filtered search (a date range, a folder) by the share of photos that pass: exact scoring of the passing
photos against hnswlib's filter, where the two cross, and what ``search.exact_limit`` makes of it.

    python benchmarks/filtered_search.py --rows 100000 --dim 768 --queries 50 --out /tmp/filtered_search.json
    python benchmarks/filtered_search.py --shares 0.001 0.01 0.02 0.03 0.05 0.07 0.1 0.2 0.5 1.0  # finer crossover
    python benchmarks/filtered_search.py --ef 64      # (b) with a narrower hnswlib search than p2w's default

The catalog lives in /var/tmp/p2w-filtered-<rows>x<dim> and is reused by later runs with the same --rows, --dim and
catalog schema (filling it and building the ANN: about 35 s at 100,000 rows on 2 cores, 2.5 min at 300,000). Its rows:
unit vectors on a random 64-d subspace plus 5% noise (low-rank like image embeddings, so ``ann.build`` makes its
reduced graph, as for a real 768-d catalog), capture times uniform over 10 years and independent of the ids (a date
range passes ids scattered over the table), and 100 folders of consecutive ids (as an index run adds them; one folder
= 1%). The photos exist on disk as empty files under the same folder, so ``search.search`` keeps them (nothing is
patched). Queries: a catalog vector plus 0.7 times another, normalised; each gets a date range of the share's length
at a random place (or a random folder).

Per query: sql = ``Catalog.ids_where`` (once, shared by both strategies); (a) ``search.exact`` over the passing ids
(their vectors read from SQLite, one product); (b) ``Ann.query(q, 2k+8, allowed=set(ids).__contains__)``, building the
set included; end-to-end ``search.search(catalog, q, 10, where, ann=...)`` with ``search.exact_limit`` as it
is. "short":
queries where (b) found fewer than 2k+8 (search then scores exactly after all); recall@10 of (b) against (a), which is
exact (0.0 with "short": it found none). "100%" is a date range that keeps every photo (the filtered path); "none" is
no filter: (a) exact over every id, (b) and end-to-end the plain ANN (its "sql" is ``Catalog.ids()``, not part of a
plain search). Single-threaded hnswlib queries (as `p2w search` runs one); BLAS threads as installed.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import functools
import itertools
import json
import math
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from p2w.core.dates import Taken, Where
from p2w.library import ann as ann_mod
from p2w.library import search as search_mod
from p2w.library.catalog import SCHEMA_VERSION, Catalog

T0 = calendar.timegm(dt.datetime(2015, 1, 1).timetuple())
SPAN = 10 * 365 * 86400
FOLDERS = 100
RANK = 64


def open_or_fill(root: Path, rows: int, dim: int) -> tuple[Catalog, ann_mod.Ann, dict]:
    """The benchmark's catalog and its ANN: reused when a complete one for ``rows`` x ``dim`` is there that this p2w
    reads (made at the same schema version; a probe of its rows for a working tree between versions)."""
    ready = root / "ready.json"
    info = json.loads(ready.read_text()) if ready.is_file() else {}
    if (info.get("rows"), info.get("dim"), info.get("schema")) == (rows, dim, SCHEMA_VERSION):
        catalog = Catalog(root / "catalog", "bench/filtered")
        try:
            catalog.rows_for([1])
            start = time.perf_counter()
            index = ann_mod.load(catalog)
            return catalog, index, info | {"load_s": round(time.perf_counter() - start, 1)}
        except sqlite3.Error:
            catalog.close()
    for p in (root / "catalog").glob("*"):
        p.unlink()
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((RANK, dim)).astype(np.float32)
    taken = rng.integers(T0, T0 + SPAN, rows)
    catalog = Catalog(root / "catalog", "bench/filtered", create=True)
    start = time.perf_counter()
    for lo in range(0, rows, 10_000):
        n = min(rows, lo + 10_000) - lo
        x = rng.standard_normal((n, RANK)).astype(np.float32) @ basis
        x += 0.05 * np.linalg.norm(x, axis=1, keepdims=True) / math.sqrt(dim) * rng.standard_normal((n, dim))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        batch = []
        for j in range(n):
            i = lo + j
            path = root / "photos" / f"f{i * FOLDERS // rows:02d}" / f"{i:07d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            batch.append((str(path), 0, 0, f"{i:064x}", x[j].tobytes(), 1.0, Taken(int(taken[i]), None, "exif")))
        catalog.put(batch, dim)
    fill_s = time.perf_counter() - start
    start = time.perf_counter()
    index = ann_mod.build(catalog)
    ann_mod.save(index, catalog.folder)
    info = {"rows": rows, "dim": dim, "schema": SCHEMA_VERSION, "graph_dim": index.index.dim}
    info |= {"fill_s": round(fill_s, 1), "build_s": round(time.perf_counter() - start, 1)}
    ready.write_text(json.dumps(info))
    return catalog, index, info


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")


def run(catalog: Catalog, index: ann_mod.Ann, queries: np.ndarray, wheres: list, k: int, ef: int | None) -> dict:
    """Time (a), (b) and end-to-end for each query and its filter (None: no filter), in an order that rotates from
    query to query (each one's reads warm SQLite's page cache for the next)."""
    want = 2 * k + 8
    t: dict[str, list[float]] = {n: [] for n in ("sql", "a", "b", "e2e")}
    recall, short, passing, returned = [], 0, [], []
    for n, (q, where) in enumerate(zip(queries, wheres, strict=True)):
        start = time.perf_counter()
        ids = catalog.ids_where(where) if where else catalog.ids()
        t["sql"].append(time.perf_counter() - start)
        got: dict = {}
        for step in ("a", "b", "e2e")[n % 3 :] + ("a", "b", "e2e")[: n % 3]:
            start = time.perf_counter()
            if step == "a":
                got[step] = search_mod.exact(catalog, q, ids, want)[0]
            elif step == "b":
                got[step] = index.query(q, want, ef, allowed=set(ids).__contains__ if where else None)[0]
            else:
                got[step] = search_mod.search(catalog, q, k, where, ann=index)
            t[step].append(time.perf_counter() - start)
        short += len(got["b"]) < min(want, len(ids))
        truth = set(got["a"][:k].tolist())
        recall.append(len(truth & set(got["b"][:k].tolist())) / max(1, len(truth)))
        passing.append(len(ids))
        returned.append(len(got["e2e"]))
    total_a = [s + a for s, a in zip(t["sql"], t["a"], strict=True)]
    total_b = [s + b for s, b in zip(t["sql"], t["b"], strict=True)]
    n = int(np.median(passing))
    return {
        "passing": n,
        "sql_ms": percentile(t["sql"], 50),
        "a_rest_ms": percentile(t["a"], 50),
        "a_ms": percentile(total_a, 50),
        "a_p90_ms": percentile(total_a, 90),
        "b_rest_ms": percentile(t["b"], 50),
        "b_ms": percentile(total_b, 50),
        "b_p90_ms": percentile(total_b, 90),
        "recall10_b": round(float(np.mean(recall)), 4),
        "short_b": short,
        "e2e_ms": percentile(t["e2e"], 50),
        "e2e_p90_ms": percentile(t["e2e"], 90),
        "e2e_path": "ann" if where_is_ann(wheres[0], n, index.live) else "exact",
        "e2e_hits_min": min(returned),
        "exact_us_per_photo": round(percentile(t["a"], 50) * 1000 / max(n, 1), 3),
    }


def where_is_ann(where: Where | None, n: int, total: int) -> bool:
    return where is None or n > search_mod.exact_limit(total)


def crossover(rows: list[dict], total: int) -> dict | None:
    """Where (b) becomes faster than (a), interpolated on log(share) between the two shares around it."""
    pts = [(r["share"], math.log(r["a_ms"] / r["b_ms"])) for r in rows if isinstance(r["share"], float)]
    pts.sort()
    for (s0, d0), (s1, d1) in itertools.pairwise(pts):
        if d0 <= 0 < d1:
            x = math.exp(math.log(s0) + (math.log(s1) - math.log(s0)) * (-d0) / (d1 - d0))
            return {"share": round(x, 4), "passing": round(x * total), "between": [s0, s1]}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", type=int, default=None, help="hnswlib's breadth for (b) (default: p2w's)")
    ap.add_argument("--shares", type=float, nargs="*", default=[0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0])
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/filtered_search.json"))
    args = ap.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    root = args.workdir / f"p2w-filtered-{args.rows}x{args.dim}"
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    catalog, index, info = open_or_fill(root, args.rows, args.dim)
    index.index.set_num_threads(1)
    rng = np.random.default_rng(1)
    picks = rng.choice(catalog.ids(), (args.queries, 2), replace=False)
    found = catalog.vectors_for([int(i) for i in picks.ravel()])
    vec = {i: np.frombuffer(b, dtype=np.float32) for i, b in found.items()}
    queries = np.stack([vec[int(a)] + 0.7 * vec[int(b)] for a, b in picks])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for _ in catalog.all_vectors():  # warm-up: the table and the graph in the page cache
        pass
    measure = functools.partial(run, catalog, index, queries, k=args.k, ef=args.ef)
    run(catalog, index, queries[:5], [None] * len(queries[:5]), args.k, args.ef)

    results = []
    for share in sorted(args.shares):
        starts = T0 + rng.random(args.queries) * SPAN * (1 - share)
        wheres = [Where(after=int(s), before=int(s + share * SPAN) + 1) for s in starts]
        r = measure(wheres)
        results.append({"filter": f"date {share:.1%}", "share": share} | r)
    folders = rng.integers(0, FOLDERS, args.queries)
    wheres = [Where(within=str(root / "photos" / f"f{f:02d}")) for f in folders]
    results.append({"filter": "--in 1 folder", "share": "folder"} | measure(wheres))
    results.append({"filter": "none", "share": "none"} | measure([None] * args.queries))
    cross = crossover(results, args.rows)

    shape = f"{args.rows} photos, {args.dim}-d (graph {info.get('graph_dim')}-d)"
    print(f"\n{shape}, k={args.k}, (b) ef={args.ef or 'default'}, {args.queries} queries")
    print(f"exact when at most {search_mod.exact_limit(args.rows)} pass; catalog: {info}\n")
    cols = [
        ("filter", "filter"), ("passing", "passing"), ("sql_ms", "sql"), ("a_rest_ms", "(a) rest"),
        ("a_ms", "(a) med"), ("a_p90_ms", "(a) p90"), ("b_rest_ms", "(b) rest"), ("b_ms", "(b) med"),
        ("b_p90_ms", "(b) p90"), ("recall10_b", "(b) R@10"), ("short_b", "(b) short"),
        ("e2e_ms", "search med"), ("e2e_p90_ms", "search p90"), ("e2e_path", "search path"),
    ]  # fmt: skip
    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c, _ in cols) + " |")
    print("\n(times in ms: median over queries, p90; 'rest' = after ids_where)")
    if cross:
        print(f"crossover: (b) faster than (a) from {cross['share']:.2%} passing (~{cross['passing']} photos)")
    else:
        print("crossover: none between the shares measured")
    wall = time.perf_counter() - started
    out = {
        "rows": args.rows, "dim": args.dim, "k": args.k, "ef_b": args.ef, "queries": args.queries, "catalog": info,
        "exact_limit": search_mod.exact_limit(args.rows), "results": results, "crossover": cross,
        "wall_s": round(wall, 1), "load_before": load_before, "load_after": os.getloadavg(),
    }  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wall {wall:.0f} s; load {load_before} -> {os.getloadavg()}; written {args.out}")
    catalog.close()


if __name__ == "__main__":
    main()
