"""Indexing rate of `p2w index` against the model's own forward rate on already-preprocessed tensors.

    python benchmarks/make_photos.py /tmp/photos 2000
    python benchmarks/index_throughput.py /tmp/photos

By default it runs `p2w index`'s defaults: device auto, batch 64, and the decoding processes p2w chooses for the
device (`p2w.core.devices.default_workers`); `--workers N`, `--device`, `--batch` override them. Random weights are
used (`--pretrained none`): the speed is the same as with trained ones. Both rates use the same model, batch size,
device and thread count; the index run starts from an empty P2W_HOME. The model's rate is
measured before and after the index run and averaged, so that a drift of the machine's speed during the run (seen
here: +-5% between runs) hits both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import p2w
from p2w.core.devices import default_workers
from p2w.library.index import index
from p2w.settings import Settings
from p2w.spec import BackboneSpec


def model_rate(engine, batch: int, batches: int) -> float:  # type: ignore[no-untyped-def]
    """Images/s of the image tower alone on preprocessed tensors (inference mode)."""
    bb = engine.backbone
    size = bb.model.visual.image_size
    size = (size, size) if isinstance(size, int) else size
    pixels = torch.randn(batch, 3, *size)
    with torch.inference_mode():
        bb.encode_image(pixels).cpu()  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            bb.encode_image(pixels).cpu()  # .cpu(): waits for a GPU, as the index loop does
    return batch * batches / (time.perf_counter() - start)


def decode_rate(engine, files: list[str], n: int = 200) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Single-process ms per image of decoding (JPEG draft) and of preprocessing."""
    from p2w.core.images import open_image

    bb = engine.backbone
    size = bb.model.visual.image_size
    draft = size if isinstance(size, int) else min(size)
    t0 = time.perf_counter()
    images = [open_image(f, draft=draft) for f in files[:n]]
    t1 = time.perf_counter()
    for im in images:
        bb.preprocess(im)
    t2 = time.perf_counter()
    return {"decode_ms": 1000 * (t1 - t0) / n, "preprocess_ms": 1000 * (t2 - t1) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes [default: p2w's for the device]")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    files = sorted(str(p) for p in args.folder.rglob("*.jpg"))
    engine = p2w.load(model=args.model, pretrained="none", device=args.device)
    device = engine.backbone.placement.device
    workers = default_workers(device) if args.workers is None else args.workers
    batches = max(3, min(30, len(files) // args.batch // 3))
    before = model_rate(engine, args.batch, batches)
    parts = decode_rate(engine, files)
    home = Path(tempfile.mkdtemp(prefix="p2w-bench-"))
    settings = Settings(home=home, model=args.model, pretrained="none", device=args.device)
    start = time.perf_counter()
    report = index(
        [args.folder],
        BackboneSpec(args.model, "none"),
        lambda: engine,
        settings,
        batch_size=args.batch,
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    rerun = time.perf_counter()
    index([args.folder], BackboneSpec(args.model, "none"), lambda: engine, settings, workers=args.workers)
    rerun = time.perf_counter() - rerun
    after = model_rate(engine, args.batch, batches)
    pure = (before + after) / 2
    rate = report.added / seconds
    print(
        json.dumps(
            {
                "model": args.model,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "batch": args.batch,
                "workers": workers,
                "workers_option": "default" if args.workers is None else args.workers,
                "images": report.added,
                "skipped": len(report.skipped),
                "index_seconds": round(seconds, 2),
                "index_images_per_s": round(rate, 2),
                "model_images_per_s": round(pure, 2),
                "model_images_per_s_before_after": [round(before, 2), round(after, 2)],
                "ratio": round(rate / pure, 3),
                "decode_ms_per_image": round(parts["decode_ms"], 2),
                "preprocess_ms_per_image": round(parts["preprocess_ms"], 2),
                "unchanged_rerun_seconds": round(rerun, 2),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
