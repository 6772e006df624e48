"""Build p2w's embedded micro model from scratch, one seeded command (~20 minutes on 2 CPU cores):

    python tools/microworld/build.py [--out build/microworld] [--stages clip,ship,mapper,demo,eval]
    python tools/microworld/build.py --seed 1 --out build/mw-s1 --target build/mw-s1/ship   # leave the package alone

Stages (each reads what the previous ones wrote; run a subset with --stages):
  clip    train the micro CLIP on the colour world (tools/microworld/train_clip.py)
  ship    zero the token rows no caption or prompt uses, store fp16 weights + config in src/p2w/assets/
          (or in --target DIR: the later stages then use that model as a config + weights file, not the builtin)
  mapper  write the world's training images and train the Pic2Word mapper with `p2w train` itself
  demo    store the demo gallery items (held-out test items) in src/p2w/assets/
  eval    `p2w eval micro-fashion --mode all --json` with the shipped model and mapper -> OUT/eval.json

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or --data DIR). Long CPU runs set glibc's
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ (memory trimming stalled steps for seconds otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from p2w.micro import world as mw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ASSETS = ROOT / "src" / "p2w" / "assets" / "p2w-micro-fashion"
MODEL = "p2w-micro-fashion"
STAGES = ("clip", "ship", "mapper", "demo", "eval")
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}
DEMO_PER_CLASS = 30  # held-out items in the demo gallery (each shown in every colour)
DEMO_SEED = 7


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env or ENV)
    return time.perf_counter() - start


def kept_texts() -> list[str]:
    """Every text the shipped model must read: training captions, benchmark and demo prompts, the train prompt."""
    from p2w.core.compose import TRAIN_PROMPT
    from p2w.evaluation.micro_fashion import TASKS

    texts = mw.all_captions()
    words = [*mw.CLASSES, *mw.COLOUR_NAMES]
    texts += [template.replace("{text}", w) for template in TASKS.values() for w in words]
    return [*texts, TRAIN_PROMPT, *words]


def model_args(target: Path) -> list[str]:
    """``--model/--pretrained`` of the shipped model: the builtin name, or the files in ``--target``."""
    if target == ASSETS:
        return ["--model", MODEL, "--pretrained", "builtin"]
    return ["--model", str(target / "model.json"), "--pretrained", str(target / "model.safetensors")]


def ship(out: Path, target: Path) -> dict[str, object]:
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    from train_clip import CONFIG, build_model

    state = load_file(str(out / "clip.safetensors"))
    _, tokenizer = build_model(CONFIG)
    ids = tokenizer(kept_texts())  # (n, ctx), includes start/end tokens and padding 0
    keep = torch.unique(ids)
    emb = state["token_embedding.weight"]
    mask = torch.zeros(emb.shape[0], dtype=torch.bool)
    mask[keep] = True
    state["token_embedding.weight"] = emb * mask[:, None]
    target.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    meta = {"format": "p2w-builtin-1", "open_clip": open_clip.__version__, "torch": torch.__version__}
    save_file(half, str(target / "model.safetensors"), metadata=meta)
    os.chmod(target / "model.safetensors", 0o644)  # package data: readable by every user
    shutil.copyfile(CONFIG, target / "model.json")
    return {"token_rows_kept": int(mask.sum()), "bytes": (target / "model.safetensors").stat().st_size}


def mapper(out: Path, data: Path | None, args: argparse.Namespace, target: Path) -> dict[str, object]:
    items = mw.load_items("train", data)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(items), size=args.mapper_images, replace=False))
    colours = rng.integers(0, len(mw.COLOURS), size=len(rows))
    folder = out / "train-images"
    if folder.exists():
        shutil.rmtree(folder)
    rgb = mw.colourise(items.images[rows], colours)
    mw.save_images(rgb, folder, [f"f{r:05d}-{mw.COLOUR_NAMES[c]}" for r, c in zip(rows, colours, strict=True)])
    home = out / "home"
    shutil.rmtree(home / "mappers", ignore_errors=True)
    env = {**ENV, "P2W_HOME": str(home)}
    cmd = [sys.executable, "-m", "p2w", "train", "--data", str(folder), *model_args(target)]
    cmd += ["--name", "micro-fashion", "--epochs", str(args.mapper_epochs), "--lr", str(args.mapper_lr)]
    cmd += ["--batch-size", "128", "--seed", str(args.seed), "--json", "--force"]  # a fresh run every time
    seconds = run(cmd, env)
    shutil.copyfile(home / "mappers" / "micro-fashion.safetensors", target / "mapper.safetensors")
    return {"images": len(rows), "epochs": args.mapper_epochs, "lr": args.mapper_lr, "seconds": round(seconds, 1)}


def demo(data: Path | None) -> dict[str, object]:
    test = mw.load_items("test", data)
    rows = mw.balanced_rows(test.labels, DEMO_PER_CLASS, DEMO_SEED)
    np.savez_compressed(ASSETS / "demo.npz", images=test.images[rows], labels=test.labels[rows], rows=rows)
    return {"items": len(rows), "bytes": (ASSETS / "demo.npz").stat().st_size}


def evaluate(out: Path, target: Path) -> dict[str, object]:
    env = {**ENV, "P2W_HOME": str(out / "home")}
    cmd = [sys.executable, "-m", "p2w", "eval", "micro-fashion", "--mode", "all", "--json", *model_args(target)]
    cmd += ["--mapper", str(target / "mapper.safetensors")]
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    results = json.loads(done.stdout)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    return {r["mode"]: r["metrics"] for r in results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "microworld")
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--target", type=Path, default=ASSETS, help="where ship puts the model [src/p2w/assets/...]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clip-steps", type=int, default=800)
    ap.add_argument("--mapper-images", type=int, default=20000)
    ap.add_argument("--mapper-epochs", type=int, default=10)
    ap.add_argument("--mapper-lr", type=float, default=1e-4)  # p2w train's default, the reference's
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(sorted(unknown))}; use {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    log: dict[str, object] = {}
    if "clip" in stages:
        cmd = [sys.executable, str(HERE / "train_clip.py"), "--out", str(args.out), "--seed", str(args.seed)]
        cmd += ["--steps", str(args.clip_steps)] + (["--data", str(args.data)] if args.data else [])
        log["clip_seconds"] = round(run(cmd), 1)
    if "ship" in stages:
        log["ship"] = ship(args.out, args.target)
    if "mapper" in stages:
        log["mapper"] = mapper(args.out, args.data, args, args.target)
    if "demo" in stages:
        log["demo"] = demo(args.data)
    if "eval" in stages:
        log["eval"] = evaluate(args.out, args.target)
    print(json.dumps(log, indent=1))
    with (args.out / "build-log.jsonl").open("a") as f:
        f.write(json.dumps({"stages": stages, **log}) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
