"""`p2w embed dataset` against the image tower's own rate, in this process and on Ray (one actor), side by side.

    python benchmarks/embed_dataset.py --shards 20 --per-shard 100            # 2,000 generated JPEGs in 20 shards

Writes img2dataset-style shards (KEY.jpg, KEY.txt, KEY.json; 640x480 photo-like JPEGs from make_photos.py) into a
temporary folder, then measures, in one run: the tower's rate on preprocessed tensors (random ViT-B-32 weights, batch
64: the speed is the same as with trained ones), `embed_dataset` in this process (the device's default decoding
processes), and `embed_dataset --ray local` with one tower actor (its cluster's start timed apart: Ray's start-up is
not the engine's rate). The tower's rate is measured before and after and averaged. The driver's peak RSS is read
from /proc (VmHWM) after each run. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from make_photos import make  # benchmarks/ on sys.path when run as a script

from p2w.core.backbone import Backbone
from p2w.datasets.embed import Options, embed_dataset
from p2w.settings import Settings


def write_shards(folder: Path, shards: int, per_shard: int) -> str:
    """``shards`` tars of ``per_shard`` samples each; returns their brace pattern."""
    photos = make(folder / "photos", shards * per_shard)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                for ext, data in (
                    ("jpg", photos[s * per_shard + i].read_bytes()),
                    ("txt", f"a generated photo {key}".encode()),
                    ("json", json.dumps({"key": key}).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def tower_rate(backbone: Backbone, batch: int = 64, batches: int = 6) -> float:
    """Images/s of the image tower alone on preprocessed tensors."""
    size = backbone.draft_size
    pixels = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        backbone.encode_image(pixels)
        start = time.perf_counter()
        for _ in range(batches):
            backbone.encode_image(pixels)
    return batch * batches / (time.perf_counter() - start)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    settings = Settings.from_env()
    spec = settings.backbone(args.model, "none")
    backbone = Backbone.load(spec, device="cpu")
    with tempfile.TemporaryDirectory(prefix="p2w-embed-bench-") as tmp:
        root = Path(tmp)
        pattern = write_shards(root / "shards", args.shards, args.per_shard)
        rows = args.shards * args.per_shard
        before = tower_rate(backbone)
        here = embed_dataset([pattern], root / "here", spec, lambda: backbone, Options())
        out: dict[str, object] = {"rows": rows, "threads": torch.get_num_threads(), "load": os.getloadavg()}
        out["in_process"] = {**here.to_json(), "driver_peak_rss_mib": round(peak_rss_mib())}
        if not args.skip_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            out["ray_start_s"] = round(time.perf_counter() - t0, 2)
            there = embed_dataset([pattern], root / "ray", spec, lambda: backbone, Options(), ray="auto")
            ray.shutdown()
            out["ray_one_actor"] = {**there.to_json(), "driver_peak_rss_mib": round(peak_rss_mib())}
        after = tower_rate(backbone)
        tower = (before + after) / 2
        out["tower_rows_per_s"] = {"before": round(before, 1), "after": round(after, 1), "mean": round(tower, 1)}
        out["in_process_over_tower"] = round(here.rows / here.seconds / tower, 3)
        if not args.skip_ray:
            out["ray_over_in_process"] = round((there.rows / there.seconds) / (here.rows / here.seconds), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
