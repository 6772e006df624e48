"""Which cosine tells a near-duplicate from another photo of the same subject: the default of ``p2w duplicates``.

    python benchmarks/duplicates_threshold.py --items 500

The embedded micro model (``p2w-micro-fashion``, the one trained model on this machine) on held-out Fashion-MNIST test
items, each painted in a seeded colour and drawn at 128x128 (so that the edits below act on a photo-sized image, as
the model's own preprocessing then sees it). For each item, near-duplicates made from it:

- ``jpeg60``: re-encoded as JPEG at quality 60;  ``half``: resized to half its size;  ``crop5``: 5% cut off on every
  side;  ``rotate3``: turned 3 degrees;  ``all``: all four, one after the other;

and, as the photos that must stay apart, distinct photos of the same subject: the other items of its class in its
colour. Positive pairs (item, its edit) and negative pairs (item, each same-subject photo) are scored by the cosine of
their image embeddings; for each threshold, precision and recall of "pair >= threshold", per edit and pooled. The
best threshold (F1 pooled) is printed, with the cosines each side of it.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

import p2w
from p2w.micro import world as mw

SIDE = 128
EDITS = ("jpeg60", "half", "crop5", "rotate3", "all")


def edit(image: Image.Image, kind: str) -> Image.Image:
    """One near-duplicate of ``image``."""
    if kind == "all":
        for step in EDITS[:-1]:
            image = edit(image, step)
        return image
    if kind == "jpeg60":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=60)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "half":
        return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)
    if kind == "crop5":
        dx, dy = round(image.width * 0.05), round(image.height * 0.05)
        return image.crop((dx, dy, image.width - dx, image.height - dy))
    return image.rotate(3, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def photos(items: int, seed: int) -> tuple[list[Image.Image], np.ndarray, np.ndarray]:
    """``items`` held-out items (a balanced draw), painted in seeded colours, at ``SIDE`` px; their class and colour."""
    test = mw.load_items("test")
    rows = mw.balanced_rows(test.labels, items // len(mw.CLASSES), seed)
    colours = np.random.default_rng(seed).integers(0, len(mw.COLOURS), size=len(rows))
    rgb = mw.colourise(test.images[rows], colours)
    return [Image.fromarray(a).resize((SIDE, SIDE), Image.Resampling.BICUBIC) for a in rgb], test.labels[rows], colours


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rates(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[float, float, float]:
    tp, fp = int((pos >= t).sum()), int((neg >= t).sum())
    p, r = tp / max(tp + fp, 1), tp / len(pos)
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/duplicates_threshold.json"))
    args = ap.parse_args()
    start = time.perf_counter()
    engine = p2w.load("p2w-micro-fashion", mapper=None, device="cpu")
    base, label, colour = photos(args.items, args.seed)
    embed = lambda images: unit(engine.image_features(images).cpu().numpy())  # noqa: E731
    originals = embed(base)
    pos = {kind: np.einsum("nd,nd->n", originals, embed([edit(i, kind) for i in base])) for kind in EDITS}
    same = (label[:, None] == label[None]) & (colour[:, None] == colour[None]) & ~np.eye(len(base), dtype=bool)
    neg = (originals @ originals.T)[np.triu(same)]
    pooled = np.concatenate(list(pos.values()))
    grid = np.round(np.arange(0.80, 1.0001, 0.005), 3)
    best = max(grid, key=lambda t: rates(pooled, neg, float(t))[2])
    print(f"{len(base)} photos, {len(neg)} same-subject pairs, {len(pooled)} near-duplicate pairs")
    print("| threshold | P | R | F1 | " + " | ".join(f"R {k}" for k in EDITS) + " |")
    print("|---" * (4 + len(EDITS)) + "|")
    table = []
    for t in grid:
        p, r, f = rates(pooled, neg, float(t))
        per = [rates(pos[k], neg, float(t))[1] for k in EDITS]
        table.append(
            {"threshold": float(t), "P": p, "R": r, "F1": f, **{f"R_{k}": v for k, v in zip(EDITS, per, strict=True)}}
        )
        mark = " **best**" if t == best else ""
        print(f"| {t:.3f}{mark} | {p:.3f} | {r:.3f} | {f:.3f} | " + " | ".join(f"{v:.3f}" for v in per) + " |")
    quantiles = {k: np.quantile(v, [0.01, 0.05, 0.5]).round(4).tolist() for k, v in pos.items()}
    print(f"near-duplicate cosines (1%, 5%, 50%): {quantiles}")
    print(f"same-subject cosines (50%, 99%, 99.9%, max): {np.quantile(neg, [0.5, 0.99, 0.999, 1]).round(4).tolist()}")
    print(f"best threshold {best:.3f}; {time.perf_counter() - start:.1f} s")
    args.out.write_text(json.dumps({"best": float(best), "table": table, "near": quantiles}, indent=1))


if __name__ == "__main__":
    main()
