"""``p2w train --data --captions``: alternate the two objectives step by step, or sum them in every step? Measured in
the colour world (docs/microworld.md) with the embedded micro CLIP, on ``p2w eval micro-fashion`` (pic2word mode).

Every variant trains LinCIR's phi with the same options (lr 1e-4, wd 0.01, 500 warm-up steps then constant,
dropout 0.5, noise 1.0, batch 128, seed 0) and sees the same samples: ``--steps`` image batches and/or ``--steps``
caption batches. ``alternate`` makes ``2 * steps`` steps (one objective each), ``sum`` ``steps`` steps (both each);
``images`` and ``captions`` train one objective for ``steps`` steps, for reference. Training images are
``--images`` Fashion-MNIST training items, each in a seeded random colour (written as PNG files once); captions are
every caption of the world (``p2w.micro.world.all_captions()``: 720). Needs Fashion-MNIST.

    python benchmarks/mixed_objective.py --out /tmp/mixed --images 5000 --steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

VARIANTS = ("alternate", "sum", "images", "captions")


def world_files(out: Path, n_images: int, seed: int) -> tuple[Path, Path]:
    """The training images (PNG, written once) and the caption file."""
    from p2w.micro import world as mw

    folder, captions = out / f"train-images-{n_images}", out / "captions.txt"
    if not folder.is_dir():
        items = mw.load_items("train")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(items), size=n_images, replace=False))
        colours = rng.integers(0, len(mw.COLOURS), size=len(rows))
        names = [f"f{r:05d}-{mw.COLOUR_NAMES[c]}" for r, c in zip(rows, colours, strict=True)]
        mw.save_images(mw.colourise(items.images[rows], colours), folder, names)
    captions.write_text("\n".join(mw.all_captions()) + "\n", encoding="utf-8")
    return folder, captions


def train_variant(variant: str, images: Path, captions: Path, steps: int, batch: int, seed: int) -> dict[str, object]:
    from p2w.training.config import TrainConfig
    from p2w.training.loop import train

    cfg = TrainConfig(
        data=str(images) if variant != "captions" else "",
        captions=str(captions) if variant != "images" else None,
        name=f"mixed-{variant}",
        model="p2w-micro-fashion",
        pretrained="builtin",
        device="cpu",
        batch_size=batch,
        network="phi",
        lr=1e-4,
        weight_decay=0.01,
        warmup=500,
        schedule="constant",
        mix=variant if variant in ("alternate", "sum") else "alternate",
        max_steps=2 * steps if variant == "alternate" else steps,
        val_fraction=0.0,
        seed=seed,
        force=True,
    )
    start = time.perf_counter()
    result = train(cfg)
    losses = result.step_losses
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "mapper": str(result.mapper_path),
        "first_loss": losses[0],
        "last_losses_mean": float(np.mean(losses[-50:])),
    }


def evaluate(mapper: str) -> dict[str, float]:
    import p2w
    from p2w.evaluation import micro_fashion

    engine = p2w.load(model="p2w-micro-fashion", pretrained="builtin", mapper=mapper, device="cpu")
    [result] = micro_fashion.evaluate(engine, None, mode="pic2word")
    return {
        "class P@10": round(result.metrics["class-change"]["P@10"], 2),
        "class P@50": round(result.metrics["class-change"]["P@50"], 2),
        "colour R@1": round(result.metrics["colour-change"]["R@1"], 2),
        "colour R@10": round(result.metrics["colour-change"]["R@10"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/p2w-mixed"))
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("P2W_HOME", str(args.out / "home"))
    images, captions = world_files(args.out, args.images, args.seed)
    for variant in args.variants.split(","):
        row = {"variant": variant, "steps": args.steps, "batch": args.batch, "seed": args.seed}
        row |= train_variant(variant, images, captions, args.steps, args.batch, args.seed)
        row |= evaluate(str(row["mapper"]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
