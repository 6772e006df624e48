"""Measure the cost of encoding composed queries with the text tower trimmed to the batch's longest prompt versus
the full context (77 positions), and check both give the same features.

    python benchmarks/text_context.py --model ViT-L-14 --batch 64 --device cpu --repeats 3

Random weights (``--pretrained none``) are enough: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from p2w.core.backbone import Backbone
from p2w.core.compose import DEFAULT_TEMPLATE, fill, prompt_ids
from p2w.spec import BackboneSpec

CAPTIONS = ["with a red logo", "is darker and has long sleeves and is black with a collar", "as a cartoon", "in blue"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(fn, repeats: int, sync) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    bb = Backbone.load(BackboneSpec(args.model, "none"), device=args.device, precision=args.precision)
    prompts = [fill(DEFAULT_TEMPLATE, CAPTIONS[i % len(CAPTIONS)]) for i in range(args.batch)]
    ids = prompt_ids(bb, prompts, need_star=True)
    tokens = torch.randn(args.batch, bb.token_width, device=bb.placement.device)
    sync = torch.cuda.synchronize if bb.placement.device.type == "cuda" else (lambda: None)
    full_length = Backbone._needed_length

    def trimmed() -> torch.Tensor:
        with torch.inference_mode():
            return bb.encode_text(ids, tokens)

    def full() -> torch.Tensor:
        Backbone._needed_length = lambda self, ids: ids.shape[1]  # type: ignore[method-assign]
        try:
            with torch.inference_mode():
                return bb.encode_text(ids, tokens)
        finally:
            Backbone._needed_length = full_length  # type: ignore[method-assign]

    diff = float((trimmed() - full()).abs().max())
    t_trim, t_full = timed(trimmed, args.repeats, sync), timed(full, args.repeats, sync)
    result = {
        "model": args.model,
        "device": str(bb.placement.device),
        "device_name": torch.cuda.get_device_name() if bb.placement.device.type == "cuda" else cpu_name(),
        "precision": bb.placement.precision,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "positions_trimmed": int(bb._needed_length(ids)),
        "positions_full": int(ids.shape[1]),
        "seconds_trimmed_median": statistics.median(t_trim),
        "seconds_full_median": statistics.median(t_full),
        "speedup": statistics.median(t_full) / statistics.median(t_trim),
        "max_abs_diff": diff,
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
