"""A FAISS index over a layout bigger than what a catalog holds: build, memory, recall, latency.

    python benchmarks/faiss_index.py --rows 1000000 --folder /var/tmp/p2w-1m       # writes the layout once
    python benchmarks/faiss_index.py --rows 10000000 --folder /var/tmp/p2w-10m     # about 10 GB on disk

Synthetic 512-d unit vectors on a 32-d subspace plus noise (as benchmarks/ann_quality.py makes them; real CLIP
embeddings occupy a low-dimensional part of the space), written as a float16 layout in parts of 100,000 rows with
p2w's metadata (image_path, caption, norm, hash). Then, each in a fresh process so that its memory is its own:

- ``build``: ``build_index`` (p2w's choice of index type for ``--max-memory``), its time and peak RSS (VmHWM);
- ``search``: ``IndexGallery`` opened, ``--queries`` held-out queries (other vectors of the same distribution) one at
  a time on one thread: the gallery's share of a query (FAISS search, re-ranking with the exact vectors, metadata),
  p50 and p99; recall@10 against exact search over every row (streamed); the process's own memory (``RssAnon``) and
  the mapped files' resident pages (``RssFile``, the page cache's) before and after.
- ``sweep`` (alone: ``--step sweep``): recall@10 and the index's share at nprobe 64, 128, 256 and 512 on one index.
- ``service``: whole queries through ``Service.search`` as ``p2w serve`` runs them (ViT-B-32 with random weights, its
  real cost, and a random Pic2Word mapper): a text query and a composed one (a row as the reference, from its stored
  vector and norm, plus words), p50 and p99 of each, with the stages' shares.

One JSON object on stdout. The layout is kept in ``--folder`` (a re-run reuses it; ``--rebuild`` builds again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_quality import unit

from p2w.core import layout

PART = 100_000


def status_kib(*names: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB, e.g. ``status_kib("RssAnon", "RssFile", "VmHWM")``."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in names:
            out[key] = int(line.split()[1])
    return out


def backbone_id() -> str:
    """The layout's backbone: ViT-B-32 with random weights (512-d), the model ``service`` queries it with."""
    from p2w.settings import Settings

    return Settings.from_env().backbone("ViT-B-32", "none").id


def write_layout(folder: Path, rows: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((32, dim), dtype=np.float32)
    parts = -(-rows // PART)
    layout.start(folder, layout.Manifest(backbone_id(), dim, "float16", parts, PART, []))
    for part in range(parts):
        lo, hi = part * PART, min(rows, (part + 1) * PART)
        meta = {"image_path": [f"/photos/{i:09d}.jpg" for i in range(lo, hi)],
                "caption": [f"photo {i}" for i in range(lo, hi)], "norm": [10.0] * (hi - lo),
                "hash": [f"{i:064x}" for i in range(lo, hi)]}  # fmt: skip
        layout.write_part(folder, part, parts, unit(rng, hi - lo, dim, basis), meta, "float16")
    np.save(folder / "basis.npy", basis)


def build(folder: Path, budget: str) -> dict[str, object]:
    """The build, with its peak RSS (VmHWM: the mapped npy pages it read count there too) and the peak of its own
    memory (RssAnon, sampled every 0.2 s by a thread: there is no high-water mark of it)."""
    import threading

    from p2w.datasets.faiss_index import build_index, parse_memory

    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], status_kib("RssAnon")["RssAnon"])

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    built = build_index(folder, parse_memory(budget), queries=200)
    done.set()
    out = {k: v for k, v in vars(built).items() if k != "vectors"}
    seconds = round(time.perf_counter() - start, 1)
    return {
        **out,
        "wall_s": seconds,
        "peak_rss_mib": status_kib("VmHWM")["VmHWM"] >> 10,
        "peak_anon_mib": peak[0] >> 10,
    }


def search(folder: Path, queries: int) -> dict[str, object]:
    from p2w.datasets.faiss_index import Rows, exact_top
    from p2w.datasets.index_gallery import IndexGallery

    before = status_kib("RssAnon", "RssFile")
    gallery = IndexGallery(folder)
    opened = status_kib("RssAnon", "RssFile")
    basis = np.load(folder / "basis.npy")
    q = unit(np.random.default_rng(99), queries, basis.shape[1], basis)
    times, found = [], []
    for vector in q:
        start = time.perf_counter()
        hits = gallery.search(vector, 10)
        times.append(1000 * (time.perf_counter() - start))
        found.append([h.id for h in hits])
    after = status_kib("RssAnon", "RssFile", "VmHWM")
    truth = exact_top(Rows.of(folder), q[:200], 10)
    recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found[:200], truth, strict=False)])
    return {
        "queries": queries,
        "ms_p50": round(float(np.percentile(times, 50)), 2),
        "ms_p99": round(float(np.percentile(times, 99)), 2),
        "first_query_ms": round(times[0], 1),
        "recall_at_10": round(float(recall), 4),
        "rss_anon_mib": {
            "before_open": before["RssAnon"] >> 10,
            "opened": opened["RssAnon"] >> 10,
            "after_queries": after["RssAnon"] >> 10,
        },
        "rss_file_mib_after_queries": after["RssFile"] >> 10,
        "index_bytes": (folder / "image.index").stat().st_size,
    }


def sweep(folder: Path, queries: int, breadths: tuple[int, ...] = (64, 128, 256, 512)) -> list[dict[str, object]]:
    """Recall@10 and the index's share of a query at each breadth (``--ef``: inverted lists probed), one index."""
    from p2w.datasets.faiss_index import Rows, exact_top
    from p2w.datasets.index_gallery import IndexGallery

    gallery = IndexGallery(folder)
    basis = np.load(folder / "basis.npy")
    q = unit(np.random.default_rng(99), queries, basis.shape[1], basis)
    truth = exact_top(Rows.of(folder), q[:200], 10)
    out: list[dict[str, object]] = []
    for ef in breadths:
        times, found = [], []
        for vector in q:
            start = time.perf_counter()
            found.append([h.id for h in gallery.search(vector, 10, ef=ef)])
            times.append(1000 * (time.perf_counter() - start))
        recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found[:200], truth, strict=False)])
        out.append({"nprobe": ef, "recall_at_10": round(float(recall), 4),
                    "ms_p50": round(float(np.percentile(times[1:], 50)), 2),
                    "ms_p99": round(float(np.percentile(times[1:], 99)), 2)})  # fmt: skip
    return out


def service(folder: Path, queries: int) -> dict[str, object]:
    import torch

    import p2w
    from p2w.mappers.network import Mapper
    from p2w.serve.query import GalleryChoice
    from p2w.serve.requests import Query
    from p2w.serve.service import Service
    from p2w.settings import Settings

    torch.manual_seed(0)
    engine = p2w.load(model="ViT-B-32", pretrained="none", mapper=Mapper(512, 512), device="cpu")
    svc = Service(engine, Settings.from_env(), gallery=GalleryChoice(index=folder))
    rows = svc.status()["photos"]
    kinds = {"text": lambda i: Query(text=f"a photo of a thing number {i}", k=10),
             "composed": lambda i: Query(photo=(i * 7919) % rows, text="in red", mode="pic2word", k=10)}  # fmt: skip
    out: dict[str, object] = {}
    for kind, make in kinds.items():
        times, stages = [], []
        for i in range(queries):
            start = time.perf_counter()
            svc.search(make(i))
            times.append(1000 * (time.perf_counter() - start))
            stages.append(dict(svc.timings))
        share = {k: round(float(np.median([s[k] for s in stages[1:]])), 2) for k in stages[-1]}
        out[kind] = {"ms_p50": round(float(np.percentile(times[1:], 50)), 2),
                     "ms_p99": round(float(np.percentile(times[1:], 99)), 2), "stage_ms_p50": share}  # fmt: skip
    svc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--max-memory", default="4G")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--step", choices=("all", "build", "search", "service", "sweep"), default="all")
    args = ap.parse_args()
    if args.step == "build":
        print(json.dumps(build(args.folder, args.max_memory)))
        return
    if args.step == "search":
        print(json.dumps(search(args.folder, args.queries)))
        return
    if args.step == "sweep":
        print(json.dumps(sweep(args.folder, min(args.queries, 300))))
        return
    if args.step == "service":
        print(json.dumps(service(args.folder, min(args.queries, 200))))
        return
    out: dict[str, object] = {"rows": args.rows, "dim": args.dim, "load": os.getloadavg()}
    if not (args.folder / layout.MANIFEST).is_file():
        start = time.perf_counter()
        write_layout(args.folder, args.rows, args.dim)
        out["layout_s"] = round(time.perf_counter() - start, 1)
    out["layout_bytes"] = sum(f.stat().st_size for f in args.folder.rglob("*") if f.is_file())
    me = [sys.executable, __file__, "--folder", str(args.folder), "--max-memory", args.max_memory]
    if args.rebuild or not (args.folder / "image.index").is_file():
        out["build"] = json.loads(subprocess.check_output([*me, "--step", "build"]))
    for step in ("search", "service"):
        out[step] = json.loads(subprocess.check_output([*me, "--step", step, "--queries", str(args.queries)]))
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
