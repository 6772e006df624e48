"""How long ViT-B-32's text tower takes for one composed query after the process has been idle, by torch thread
count and OpenMP wait policy: what a `p2w serve` query pays when its user pauses between queries.

    python benchmarks/text_tower_idle.py

Each configuration runs in a process of its own (the OpenMP settings are read when torch loads): the engine's way,
the model loaded and run on one worker thread (``p2w.serve.service.start``), the prompt ``a photo of * , a red
shirt`` over its real length (10 tokens) with a random token at the ``*``; then p50 ms of the text tower called
back to back, 50 ms apart and 1 s apart (after 3 warm-up calls), and the time to read every weight of the text
transformer (151 MB in fp32) 1 s after the last work. Random weights (``--pretrained none``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import torch
from p2w.core.backbone import Backbone
from p2w.settings import Settings

threads, repeats = int(sys.argv[1]), int(sys.argv[2])
state = {}

def load():
    torch.set_num_threads(threads)
    bb = Backbone.load(Settings.from_env().backbone("ViT-B-32", "none"), device="cpu", precision="fp32")
    state["bb"], state["plan"] = bb, bb.text_plan(bb.tokenize(["a photo of * , a red shirt"]), with_star=True)

def tower():
    with torch.inference_mode():
        state["bb"].encode_planned(state["plan"], torch.randn(1, 512))

def timed(gap, n):
    for _ in range(3):
        tower()
    times = []
    for _ in range(n):
        time.sleep(gap)
        start = time.perf_counter()
        tower()
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[n // 2], 1)

def read_weights(n):  # every weight of the text transformer summed, 1 s after the last work: are they still cached?
    weights = list(state["bb"].model.transformer.parameters())
    times = []
    for _ in range(n):
        time.sleep(1.0)
        start = time.perf_counter()
        with torch.inference_mode():
            for w in weights:
                w.sum()
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[n // 2], 1)

with ThreadPoolExecutor(1) as worker:
    worker.submit(load).result()
    paces = ((0, 3 * repeats), (0.05, 2 * repeats), (1.0, repeats))
    out = {f"{gap:g}_s_apart": worker.submit(timed, gap, n).result() for gap, n in paces}
    out["read_weights_1_s_apart"] = worker.submit(read_weights, repeats).result()
print(json.dumps(out))
"""

CONFIGS = (
    ("2 threads (torch's default here)", 2, {}),
    ("1 thread", 1, {}),
    ("2 threads, OMP_WAIT_POLICY=passive", 2, {"OMP_WAIT_POLICY": "passive"}),
    ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}),
    ("2 threads, GOMP_SPINCOUNT=100000", 2, {"GOMP_SPINCOUNT": "100000"}),
    ("2 threads, OMP_PROC_BIND=true", 2, {"OMP_PROC_BIND": "true"}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--repeats", type=int, default=10, help="calls 1 s apart (twice as many 50 ms apart, thrice back to back)"
    )
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "P2W_"))}
    results = {"load_before": os.getloadavg()}
    for label, threads, extra in CONFIGS:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(threads), str(args.repeats)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
        row = results[label]
        times = "  ".join(f"{pace.replace('_', ' ')} {ms:6.1f}" for pace, ms in row.items())
        print(f"{label:<36}  {times}")
    results["load_after"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
