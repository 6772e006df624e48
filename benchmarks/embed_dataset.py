"""`p2w embed dataset` against the image tower's own rate, in this process and on Ray (one actor), side by side.

    python benchmarks/embed_dataset.py --shards 20 --per-shard 100            # 2,000 generated JPEGs in 20 shards

Writes img2dataset-style shards (KEY.jpg, KEY.txt, KEY.json; 640x480 photo-like JPEGs from make_photos.py) into a
temporary folder, then measures, in one run: the tower's rate on preprocessed tensors (random ViT-B-32 weights, batch
64: the speed is the same as with trained ones), `embed_dataset` in this process (the device's default decoding
processes), and `embed_dataset --ray local` with one tower actor (its cluster's start timed apart: Ray's start-up is
not the engine's rate). The tower's rate is measured before and after and averaged. The driver's peak RSS is read
from /proc (VmHWM) after each run, and its RSS (VmRSS) each time a part is done (flat in the rows or not). For the
scaling model: one core's decoding rate (read, hash, JPEG draft decode, resize and crop: what a decoding task does per
row), Ray Data's per-stage statistics (the report's ``ray_stats``), and with ``--big-model ViT-L-14`` that tower's
CPU rate and its FLOPs per image (torch's counter) beside ViT-B-32's. One JSON object on stdout.
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
from p2w.core.sources import Problems, plan, read
from p2w.datasets.embed import Options, embed_dataset
from p2w.datasets.rows import Transform, decode
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


def decode_rate(pattern: str, backbone: Backbone, rows: int = 400) -> dict[str, float]:
    """One core's rows/s for what a decoding task does per row (read, sha256, draft decode, resize and crop)."""
    transform = Transform.of(backbone.preprocess, backbone.draft_size)
    samples = [s for part in plan([pattern]).parts for s in read(part, Problems())][:rows]
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        decode(sample, i, transform)
    seconds = time.perf_counter() - start
    return {"rows": len(samples), "rows_per_s_one_core": round(len(samples) / seconds, 1),
            "ms_per_row": round(1000 * seconds / len(samples), 2)}  # fmt: skip


def flops_per_image(backbone: Backbone) -> float:
    """GFLOPs of one image through the tower (torch's FLOP counter, batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.draft_size
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        backbone.encode_image(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_by_part() -> tuple[list[tuple[int, int]], object]:
    """A progress callback recording (parts done, driver RSS MiB) as each part is done, and the record."""
    seen: list[tuple[int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        seen.append((done, round(rss_mib())))

    return seen, progress


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
    ap.add_argument("--big-model", default=None, help="also the CPU rate and FLOPs of this tower, e.g. ViT-L-14")
    args = ap.parse_args()
    settings = Settings.from_env()
    spec = settings.backbone(args.model, "none")
    backbone = Backbone.load(spec, device="cpu")
    with tempfile.TemporaryDirectory(prefix="p2w-embed-bench-") as tmp:
        root = Path(tmp)
        pattern = write_shards(root / "shards", args.shards, args.per_shard)
        rows = args.shards * args.per_shard
        out: dict[str, object] = {"rows": rows, "threads": torch.get_num_threads(), "load": os.getloadavg()}
        out["decode"] = decode_rate(pattern, backbone)
        out["gflops_per_image"] = {args.model: round(flops_per_image(backbone), 2)}
        before = tower_rate(backbone)
        seen, progress = rss_by_part()
        here = embed_dataset([pattern], root / "here", spec, lambda: backbone, Options(), progress=progress)
        out["in_process"] = {**here.to_json(), "driver_peak_rss_mib": round(peak_rss_mib()), "rss_by_part": seen}
        if not args.skip_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            out["ray_start_s"] = round(time.perf_counter() - t0, 2)
            seen, progress = rss_by_part()
            there = embed_dataset(
                [pattern], root / "ray", spec, lambda: backbone, Options(), ray="auto", progress=progress
            )
            ray.shutdown()
            out["ray_one_actor"] = {
                **there.to_json(),
                "driver_peak_rss_mib": round(peak_rss_mib()),
                "rss_by_part": seen,
            }
            out["ray_stats"] = json.loads((root / "ray" / "report.json").read_text())["ray_stats"]
        after = tower_rate(backbone)
        tower = (before + after) / 2
        out["tower_rows_per_s"] = {"before": round(before, 1), "after": round(after, 1), "mean": round(tower, 1)}
        out["in_process_over_tower"] = round(here.rows / here.seconds / tower, 3)
        if not args.skip_ray:
            out["ray_over_in_process"] = round((there.rows / there.seconds) / (here.rows / here.seconds), 3)
        if args.big_model:
            big = Backbone.load(settings.backbone(args.big_model, "none"), device="cpu")
            out["big_tower"] = {"model": args.big_model, "rows_per_s": round(tower_rate(big, batch=8, batches=3), 2),
                                "gflops_per_image": round(flops_per_image(big), 2)}  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
