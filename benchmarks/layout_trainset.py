"""Time and memory from a large layout to the first training batch (`p2w train --embeddings`), on synthetic rows.

    python benchmarks/layout_trainset.py --rows 1000000 --dim 768

Writes a layout of ``--rows`` random unit vectors (float16, parts of 100,000 rows, metadata with image_path, norm and
hash, as `p2w embed dataset` writes them) into a temporary folder, then in a fresh process (so its memory is this
step's alone) times `layout_features` (one pass over the metadata, one row per hash, the vectors memory-mapped) and
the first batch of 128 random rows, and reads the process's peak RSS (VmHWM). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from p2w.core import layout

PART = 100_000

MEASURE = r"""
import json, sys, time
from pathlib import Path
import torch
from p2w.training.trainset import layout_features

class Backbone:  # what layout_features asks of one: its id, width and device
    def __init__(self, backbone_id, dim):
        self.id, self.embed_dim = backbone_id, dim
        self.placement = type("P", (), {"device": torch.device("cpu")})()

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            yield line.split()[0][:-1], int(line.split()[1]) // 1024

folder, backbone_id, dim = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
before = dict(rss())
t0 = time.perf_counter()
source, images = layout_features(folder, Backbone(backbone_id, dim))
t1 = time.perf_counter()
batch = source.get(torch.randint(0, len(images.hashes), (128,)), torch.zeros(128, dtype=torch.long))
t2 = time.perf_counter()
out = {"rows": len(images.hashes), "build_s": round(t1 - t0, 2), "first_batch_ms": round(1000 * (t2 - t1), 1)}
out |= {"rss_mib_before": before["VmRSS"], **{f"{k}_mib_after": v for k, v in rss()}, "batch": list(batch.shape)}
print(json.dumps(out))
"""


def write(folder: Path, rows: int, dim: int) -> str:
    """A layout of ``rows`` synthetic rows; returns its backbone id."""
    rng = np.random.default_rng(0)
    count = -(-rows // PART)
    backbone = "synthetic/none"
    layout.start(folder, layout.Manifest(backbone, dim, "float16", count, PART, []))
    for part in range(count):
        n = min(PART, rows - part * PART)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        first = part * PART
        metadata = {
            "image_path": [f"/data/{i:09d}.jpg" for i in range(first, first + n)],
            "norm": rng.uniform(5, 15, n).astype(np.float32).tolist(),
            "hash": [f"{i:064x}" for i in range(first, first + n)],
        }
        layout.write_part(folder, part, count, vectors, metadata, "float16")
    return backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2w-layout-bench-") as tmp:
        t0 = time.perf_counter()
        backbone = write(Path(tmp), args.rows, args.dim)
        written = time.perf_counter() - t0
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, tmp, backbone, str(args.dim)], capture_output=True, text=True, check=True
        )
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    out = {"rows": args.rows, "dim": args.dim, "write_s": round(written, 1), "layout_mib": size >> 20}
    print(json.dumps({**out, **json.loads(done.stdout)}, indent=1))


if __name__ == "__main__":
    main()
