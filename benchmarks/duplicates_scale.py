"""How long ``p2w duplicates`` takes on a large catalog (the goal: 100,000 photos in under a minute).

    python benchmarks/duplicates_scale.py --rows 100000 --dim 768

A synthetic catalog in /var/tmp (kept between runs): ``--rows`` unit vectors shaped like image embeddings (a random
64-d basis plus a little noise: low-rank, as CLIP's are), 1% of them with one planted near copy (cosine about 0.99) and
0.2% with two; its ANN built once (as ``p2w index`` leaves it: a reduced graph at this size). Then
``p2w.library.duplicates.duplicates`` is timed (loading the saved ANN, reading every vector, the neighbour queries,
the exact scores, the groups), the file-existence check patched out (the rows name no files), and its groups checked
against the planted ones.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from p2w.core.dates import from_mtime
from p2w.library import ann as ann_mod
from p2w.library import duplicates as dup
from p2w.library.catalog import Catalog


def build(folder: Path, rows: int, dim: int) -> tuple[Catalog, int]:
    """The catalog (made once) and the number of planted groups."""
    rng = np.random.default_rng(0)
    planted = rows // 100
    catalog = Catalog(folder, "bench/dup", create=True)
    if catalog.count():
        return catalog, planted
    basis = rng.standard_normal((64, dim)).astype(np.float32)
    when = from_mtime(0)
    start = time.perf_counter()
    for lo in range(0, rows, 20_000):
        n = min(20_000, rows - lo)
        x = rng.standard_normal((n, 64)).astype(np.float32) @ basis
        x += 0.3 * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim) * rng.standard_normal((n, dim))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        batch = [(f"/p/{lo + i}.jpg", 10, 1, f"{lo + i:064x}", v.tobytes(), 1.0, when) for i, v in enumerate(x)]
        copies = []
        for i in range(lo, min(lo + n, planted)):
            for j in range(1 if i % 5 else 2):
                v = x[i - lo] + 0.14 * rng.standard_normal(dim).astype(np.float32) / np.float32(np.sqrt(dim))
                v = (v / np.linalg.norm(v)).astype(np.float32)
                copies.append((f"/p/copy{j}-of-{i}.jpg", 5, 1, f"c{j}{i:062x}", v.tobytes(), 1.0, when))
        catalog.put(batch + copies, dim)
    ann_mod.save(ann_mod.build(catalog), folder)
    print(f"built {catalog.count()} rows and their ANN in {time.perf_counter() - start:.0f} s")
    return catalog, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    catalog, planted = build(Path(f"/var/tmp/p2w-dup-{args.rows}x{args.dim}"), args.rows, args.dim)
    dup.os.path.exists = lambda path: True  # type: ignore[assignment]  # the rows name no files
    print(f"load {os.getloadavg()[0]:.2f}; {catalog.count()} photos, {planted} planted groups")
    for _ in range(args.repeat):
        start = time.perf_counter()
        groups = dup.duplicates(catalog)
        seconds = time.perf_counter() - start
        right = sum(1 for g in groups if all(p.path.endswith(f"-of-{Path(g.photos[0].path).stem}.jpg")
                                              for p in g.photos[1:]))  # fmt: skip
        sizes = np.bincount([len(g.photos) for g in groups])
        print(
            f"duplicates: {seconds:.1f} s, {len(groups)} groups (sizes {dict(enumerate(sizes))}), {right} exactly "
            f"as planted"
        )
    print(f"load {os.getloadavg()[0]:.2f}")
    catalog.close()


if __name__ == "__main__":
    main()
