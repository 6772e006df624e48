"""Generate N photo-like JPEGs (smooth gradients plus shapes; 640x480 by default) for indexing benchmarks.

python benchmarks/make_photos.py /tmp/photos 2000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """Write ``n`` JPEGs (quality 90) into ``folder``/NNN/ sub-folders of 500; returns their paths."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(-0.3, 0.3, (2, 3))
        pixels = np.clip(a + xx[..., None] * b[0] + yy[..., None] * b[1], 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels)
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        path = folder / f"{i // 500:03d}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=90)
        out.append(path)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("n", type=int)
    args = ap.parse_args()
    make(args.folder, args.n)
