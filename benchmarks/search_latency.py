"""Where the time of a cold `p2w search` goes (import, model load, encode, search), and the warm per-query time.

    python benchmarks/search_latency.py /tmp/photos --model ViT-B-32 --images 500

Indexes the first --images files of the folder into a fresh P2W_HOME (random weights saved to a local file, so the
model loads as a user's would), then runs `p2w search TEXT` cold in new processes. The cold overhead is measured
against a process that only loads the same model (imports torch and open_clip, builds it, reads the weights) and
exits the way `p2w` does, the two run alternately so that the machine's drift hits both; a third kind of process
repeats the search's steps with timers, to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
import p2w.cli  # what `p2w` imports before any command runs: typer, rich, p2w's light modules
from p2w.library.search import open_catalog, search
from p2w.cli.render import hits_table
from p2w.settings import Settings
from p2w.spec import BackboneSpec
t1 = time.perf_counter()
settings = Settings.from_env()
spec = BackboneSpec(settings.model, settings.pretrained)
catalog = open_catalog(spec, settings)
t2 = time.perf_counter()
import torch, open_clip  # noqa: E401
t3 = time.perf_counter()
import p2w
engine = p2w.load(device="cpu")
t4 = time.perf_counter()
query = engine.encode_query(None, "a red circle on a blue background")
t5 = time.perf_counter()
hits = search(catalog, query, k=10)
t6 = time.perf_counter()
from io import StringIO
from rich.console import Console
Console(file=StringIO(), width=100).print(hits_table(hits))
t7 = time.perf_counter()
print(json.dumps({"import_cli": t1 - t0, "open_catalog": t2 - t1, "import_torch_open_clip": t3 - t2,
                  "load_model": t4 - t3, "encode_query": t5 - t4, "load_index_and_search": t6 - t5,
                  "render": t7 - t6}))
"""

BASELINE = r"""
import os
import p2w
p2w.load(device="cpu")
os._exit(0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    import p2w
    from p2w.library.index import index
    from p2w.library.search import open_catalog, search
    from p2w.settings import Settings
    from p2w.spec import BackboneSpec

    home = Path(tempfile.mkdtemp(prefix="p2w-latency-"))
    weights = home / "weights.safetensors"
    engine = p2w.load(model=args.model, pretrained="none", device="cpu")
    save_file({k: v.contiguous() for k, v in engine.backbone.model.state_dict().items()}, str(weights))
    spec = BackboneSpec(args.model, str(weights))
    settings = Settings(home=home, model=args.model, pretrained=str(weights), device="cpu")
    files = sorted(args.folder.rglob("*.jpg"))[: args.images]
    subset = home / "photos"
    subset.mkdir()
    for f in files:
        (subset / f.name).symlink_to(f)
    engine = p2w.load(model=args.model, pretrained=str(weights), device="cpu")
    index([subset], spec, lambda: engine, settings, workers=2)
    env = {**os.environ, "P2W_HOME": str(home), "P2W_MODEL": args.model, "P2W_PRETRAINED": str(weights)}

    splits, child_walls = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        child_walls.append(time.perf_counter() - start)
        splits.append(json.loads(out.stdout))
    walls, baselines = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", BASELINE], env=env, capture_output=True, check=True)
        baselines.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(
            ["p2w", "search", "a red circle on a blue background", "--device", "cpu"],
            env=env,
            capture_output=True,
            check=True,
        )
        walls.append(time.perf_counter() - start)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_start = time.perf_counter() - start

    catalog = open_catalog(spec, settings)
    warm = []
    for i in range(50):
        start = time.perf_counter()
        search(catalog, engine.encode_query(None, f"photo number {i}"), k=10)
        warm.append(time.perf_counter() - start)
    median = {k: round(statistics.median(s[k] for s in splits), 3) for k in splits[0]}
    wall = statistics.median(walls)
    baseline = statistics.median(baselines)
    print(
        json.dumps(
            {
                "model": args.model,
                "catalog_images": len(files),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cold_split_median_s": median,
                "cold_p2w_search_wall_median_s": round(wall, 3),
                "python_start_s": round(python_start, 3),
                "in_process_overhead_s": round(
                    sum(v for k, v in median.items() if k not in ("import_torch_open_clip", "load_model")), 3
                ),
                "child_start_and_exit_s": round(statistics.median(child_walls) - sum(median.values()), 3),
                "model_load_only_process_wall_median_s": round(baseline, 3),
                "cold_overhead_beyond_model_s": round(wall - baseline, 3),
                "runs": args.runs,
                "warm_query_median_ms": round(1000 * statistics.median(warm), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
