"""Real embeddings for the ANN benchmark: the embedded micro model's image vectors and composed query vectors.

    python benchmarks/micro_embeddings.py --n 100000 --queries 1000 --out /tmp/micro.npz
    python benchmarks/ann_quality.py --vectors /tmp/micro.npz --ef 100 150 400

Gallery: ``--n`` colour-world images (Fashion-MNIST train items x random colours, seeded), encoded by
``p2w-micro-fashion`` (128-d, unit length). Queries: Pic2Word class-change queries (``a * {class}``) from held-out test
items: text-tower vectors, which sit apart from the image vectors (CLIP's modality gap), as real queries do.
Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import p2w
from p2w.evaluation.common import l2n, query_vectors
from p2w.micro import world as mw
from p2w.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    settings = Settings.from_env()
    engine = p2w.load("p2w-micro-fashion", mapper="default", device="cpu", settings=settings)
    bb = engine.backbone
    rng = np.random.default_rng(0)
    train, test = mw.load_items("train"), mw.load_items("test")
    rows = rng.integers(0, len(train), args.n)  # items repeat in other colours beyond 60,000
    colours = rng.integers(0, len(mw.COLOURS), args.n)
    norm = bb.preprocess.transforms[-1]  # Normalize
    start = time.perf_counter()
    parts = []
    with torch.inference_mode():
        for i in range(0, args.n, args.batch):
            rgb = mw.colourise(train.images[rows[i : i + args.batch]], colours[i : i + args.batch])
            parts.append(bb.encode_image(mw.pixels(rgb, norm.mean, norm.std)).numpy())
    data = l2n(np.concatenate(parts))
    seconds = time.perf_counter() - start
    q_rows = rng.integers(0, len(test), args.queries)
    q_colours = rng.integers(0, len(mw.COLOURS), args.queries)
    refs = mw.colourise(test.images[q_rows], q_colours)
    with torch.inference_mode():
        ref_feats = bb.encode_image(mw.pixels(refs, norm.mean, norm.std)).numpy()
    asked = [mw.CLASSES[k] for k in rng.integers(0, len(mw.CLASSES), args.queries)]
    queries = query_vectors(engine, "pic2word", "a * {text}", ref_feats, asked)
    np.savez(args.out, data=data.astype(np.float32), queries=queries.astype(np.float32))
    print(f"{args.n} image vectors in {seconds:.1f} s, {args.queries} composed queries -> {args.out}")


if __name__ == "__main__":
    main()
