"""Methods in the micro world: the shipped image-trained mapper, a caption-trained one and a mixed one, measured with
``p2w eval micro-fashion --mode all`` on the shipped micro CLIP, and a two-image task (docs/microworld.md).

    python tools/microworld/methods.py --seed 0 --out build/mw-methods-s0
    python tools/microworld/methods.py --seed 1 --out build/mw-methods-s1 --no-shipped

Stages, in an isolated P2W_HOME (OUT/home):
  captions  write every caption the micro CLIP was trained with (``p2w.micro.world.all_captions()``: 10 classes x
            8 colours x 9 templates = 720 lines) to OUT/captions.txt; no image is read
  caption   p2w train --captions OUT/captions.txt --model p2w-micro-fashion (LinCIR's objective)      -> mapper caption
  mixed     the same captions and --data OUT/train-images (the world's training items, one random colour each,
            written as PNG files as build.py does for the shipped mapper; --images of them)          -> mapper mixed
  eval      p2w eval micro-fashion --mode all --json --mapper NAME for shipped, caption and mixed -> OUT/eval.json
  twoimage  the two-image task (class of image A in the colour of image B)                        -> OUT/twoimage.json

``--seed`` is the training seed (mapper initialisation, data order, noise, the mixed run's image draw); the CLIP is
always the shipped one, the benchmark's own seed stays 0. Needs Fashion-MNIST (``--data DIR`` elsewhere).
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

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--model", "p2w-micro-fashion", "--pretrained", "builtin"]
STAGES = ("captions", "caption", "mixed", "eval", "twoimage")
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}
COLUMNS = [
    ("class-change", "P@10"),
    ("class-change", "P@50"),
    ("colour-change", "R@1"),
    ("colour-change", "R@10"),
    ("colour-change", "R@50"),
]
# two-image prompts in the micro CLIP's own words (every other token row of the shipped model is zero): the caption
# templates with both attributes, each attribute's word replaced by an image's token; ORDER says which image fills
# which `*` in turn (A: the item whose class is kept, B: the one whose colour is asked for)
TWO_IMAGE_PROMPTS = {
    "a * * .": "BA",  # a {c} {k}.
    "a * in * .": "AB",  # a {k} in {c}.
    "a photo of a * , in * .": "AB",  # a photo of a {k} , in {c}.
    "* *": "BA",  # {c} {k}
}


def write_captions(path: Path) -> int:
    captions = mw.all_captions()
    path.write_text("\n".join(captions) + "\n")
    return len(captions)


def write_images(folder: Path, n: int, seed: int, data: Path | None) -> int:
    items = mw.load_items("train", data)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(items), size=n, replace=False))
    colours = rng.integers(0, len(mw.COLOURS), size=len(rows))
    if folder.exists():
        shutil.rmtree(folder)
    rgb = mw.colourise(items.images[rows], colours)
    mw.save_images(rgb, folder, [f"f{r:05d}-{mw.COLOUR_NAMES[c]}" for r, c in zip(rows, colours, strict=True)])
    return len(rows)


def train(home: Path, name: str, args: argparse.Namespace, captions: Path, images: Path | None) -> dict:
    cmd = [sys.executable, "-m", "p2w", "train", "--captions", str(captions), *MODEL, "--name", name]
    cmd += ["--max-steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr)]
    cmd += ["--noise", str(args.noise), "--dropout", str(args.dropout), "--weight-decay", str(args.weight_decay)]
    cmd += ["--keywords", "rule", "--seed", str(args.seed), "--device", "cpu", "--json", "--force"]
    if images is not None:
        cmd += ["--data", str(images)]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, env={**ENV, "P2W_HOME": str(home)}, capture_output=True, text=True)
    summary = json.loads(done.stdout)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def evaluate(home: Path, mapper: str) -> dict[str, dict[str, dict[str, float]]]:
    cmd = [sys.executable, "-m", "p2w", "eval", "micro-fashion", "--mode", "all", "--json", *MODEL]
    cmd += ["--mapper", mapper, "--device", "cpu"]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=True, env={**ENV, "P2W_HOME": str(home)}, capture_output=True, text=True)
    return {r["mode"]: r["metrics"] for r in json.loads(done.stdout)}


def table(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    head = "| mapper | mode | " + " | ".join(f"{t} {k}" for t, k in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for mapper, modes in results.items():
        for mode, metrics in modes.items():
            cells = " | ".join(f"{metrics[t][k]:.2f}" for t, k in COLUMNS)
            lines.append(f"| {mapper} | {mode} | {cells} |")
    return "\n".join(lines)


def two_image(
    engine, world, feats: np.ndarray, baselines: bool = True, seed: int = 0, extra=None
) -> dict[str, dict[str, float]]:
    """Class of image A, colour of image B: A is each held-out item in its benchmark reference colour c1 (class X),
    B a seeded other held-out item of another class in another colour c2. Relevant: every gallery image of class X
    in colour c2 (``P@10``, 100 of them); ``R@10``: A's own item in colour c2. A and B are never results.
    ``extra``: more rows, ``{name: f(A features, B features) -> query vectors}``."""
    import torch

    from p2w.core.compose import QueryPlan, fill
    from p2w.evaluation import micro_fashion as mf
    from p2w.evaluation.common import l2n

    gallery = l2n(feats)
    refs = world.queries["class-change"][0]  # A: one per held-out item, in a seeded colour
    n, k = len(refs), len(mw.COLOURS)
    labels = world.items.labels
    rng = np.random.default_rng(seed + 2)
    other = np.empty(n, dtype=np.int64)
    for i in range(n):
        pool = np.flatnonzero(labels != labels[i])
        other[i] = rng.choice(pool)
    c1 = world.colour_of[refs]
    c2 = (c1 + rng.integers(1, k, size=n)) % k
    b = other * k + c2  # B: another class's item in another colour
    target_class, target = labels[world.item_of[refs]], world.item_of[refs] * k + c2

    def score(q: np.ndarray) -> dict[str, float]:
        s = l2n(q) @ gallery.T
        s[np.arange(n), refs] = -np.inf
        s[np.arange(n), b] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :50]
        hit = (labels[world.item_of[top]] == target_class[:, None]) & (world.colour_of[top] == c2[:, None])
        rank = (s > s[np.arange(n), target][:, None]).sum(1)
        return {
            "P@10": 100 * float(hit[:, :10].mean()),
            "P@50": 100 * float(hit.mean()),
            "R@10": 100 * float((rank < 10).mean()),
        }

    def compose(mode: str, template: str, images: list[np.ndarray], texts: list[str | None]) -> np.ndarray:
        qp = QueryPlan(mode, template)
        x = torch.from_numpy(np.stack(images, 1) if len(images) > 1 else images[0])
        prompts = [fill(template, t, mode) if mode != "image" else "" for t in texts]
        with torch.inference_mode():
            return engine.compose(qp, x, prompts).float().numpy()

    out: dict[str, dict[str, float]] = {}
    fa, fb = feats[refs], feats[b]
    for prompt, order in TWO_IMAGE_PROMPTS.items():
        images = [fa if o == "A" else fb for o in order]
        for mode in ("pic2word", "average", "text") if baselines else ("pic2word",):
            out[f"{mode}: {prompt}"] = score(compose(mode, prompt, images, [None] * n))
    if baselines:
        out["image: A + B"] = score(compose("image", "*", [fa, fb], [None] * n))
        out["image: A"] = score(fa)
    for name, make in (extra or {}).items():
        out[name] = score(make(fa, fb))
    # references: the colour *named* instead of shown (the benchmark's colour-change prompt, image A alone)
    names = [mw.COLOUR_NAMES[c] for c in c2]
    for mode in ("pic2word", "average") if baselines else ("pic2word",):
        out[f"{mode}, A + colour word: a photo of * , in {{text}}."] = score(
            compose(mode, mf.TASKS["colour-change"], [fa], names)
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "mw-methods")
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--seed", type=int, default=0, help="training seed (the CLIP is the shipped one)")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each run (mixed: half are images)")
    ap.add_argument("--warmup", type=int, default=20, help="[LinCIR: 500, longer than these runs]")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--images", type=int, default=5000, help="training images of the mixed run")
    ap.add_argument("--no-shipped", action="store_true", help="do not evaluate the shipped mapper (seed-free)")
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if set(stages) - set(STAGES):
        ap.error(f"unknown stage(s); use {', '.join(STAGES)}")
    out = args.out.resolve()
    home = out / "home"
    out.mkdir(parents=True, exist_ok=True)
    captions, images = out / "captions.txt", out / "train-images"
    log: dict[str, object] = {"seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()}}
    if "captions" in stages:
        log["captions"] = write_captions(captions)
    if "caption" in stages:
        log["caption"] = train(home, "caption", args, captions, None)
    if "mixed" in stages:
        log["images"] = write_images(images, args.images, args.seed, args.data)
        log["mixed"] = train(home, "mixed", args, captions, images)
    if "eval" in stages:
        from p2w.spec import builtin_file

        mappers = {} if args.no_shipped else {"shipped": str(builtin_file("p2w-micro-fashion", "mapper.safetensors"))}
        mappers |= {m: m for m in ("caption", "mixed") if (home / "mappers" / f"{m}.safetensors").is_file()}
        results = {name: evaluate(home, path) for name, path in mappers.items()}
        (out / "eval.json").write_text(json.dumps(results, indent=1))
        print(table(results), flush=True)
    if "twoimage" in stages:
        os.environ["P2W_HOME"] = str(home)
        import p2w
        from p2w.evaluation import micro_fashion as mf
        from p2w.spec import builtin_file

        tasks, world, feats = {}, mf.build_world(args.data, mf.PER_CLASS, 0), None
        mappers = {"shipped": str(builtin_file("p2w-micro-fashion", "mapper.safetensors"))}
        mappers |= {m: m for m in ("caption", "mixed") if (home / "mappers" / f"{m}.safetensors").is_file()}
        for name, mapper in mappers.items():
            engine = p2w.load("p2w-micro-fashion", mapper=mapper, device="cpu")
            if feats is None:
                feats = mf.gallery_features(engine, world)
            tasks[name] = two_image(engine, world, feats, baselines=name == "shipped")
            for row, metrics in tasks[name].items():
                print(f"{name:8s} {row:60s} " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()), flush=True)
        (out / "twoimage.json").write_text(json.dumps(tasks, indent=1))
    for key in ("caption", "mixed"):
        if key in log:
            summary = log[key]
            print(key, "loss", [round(e["loss"], 4) for e in summary["epochs"]], summary["seconds"], "s")
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps(log) + "\n")


if __name__ == "__main__":
    main()
