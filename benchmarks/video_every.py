"""How often to take a frame of a video (``p2w index --video-every``): decoding and embedding cost against recall.

    python benchmarks/video_every.py --scenes 60 --fps 25

A generated video (PyAV, H.264, ``--side`` px square, ``--fps``): ``--scenes`` scenes, each a different held-out
Fashion-MNIST item painted in a seeded colour, every other scene still and the others panning a pixel every second
frame (so that their frames all differ), its length drawn from a log-normal of median 3 s (film and phone videos cut
every few seconds), at least 0.5 s. For each
``every`` the video's frames are taken as ``p2w index`` takes them (``p2w.core.video.frames``: near-identical
consecutive frames dropped) and embedded with the embedded micro model. Recall: for each scene, the scene's own
picture as an image query against every frame kept; a hit when the best frame lies inside that scene. Cost: seconds
of decoding and embedding per minute of video, and frames kept per minute.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

import p2w
from p2w.core.video import frames
from p2w.micro import world as mw

SIDE = 128


def scenes(count: int, seed: int, side: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` pictures ``(side, side, 3)`` and their lengths in seconds."""
    rng = np.random.default_rng(seed)
    test = mw.load_items("test")
    rows = rng.choice(len(test), count, replace=False)
    rgb = mw.colourise(test.images[rows], rng.integers(0, len(mw.COLOURS), count))
    pictures = [np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC)) for a in rgb]
    return pictures, np.maximum(0.5, rng.lognormal(np.log(3.0), 0.6, count))


def write(path: Path, pictures: list[np.ndarray], lengths: np.ndarray, fps: int) -> np.ndarray:
    """The video; the start time of every scene."""
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = len(pictures[0])
        stream.pix_fmt = "yuv420p"
        n = 0
        for number, (picture, start, length) in enumerate(zip(pictures, starts, lengths, strict=True)):
            first = n
            while n / fps < start + length:
                shifted = np.roll(picture, (n - first) // 2 if number % 2 else 0, axis=1)  # a pan, or a still shot
                for packet in stream.encode(av.VideoFrame.from_ndarray(shifted, format="rgb24")):
                    container.mux(packet)
                n += 1
        for packet in stream.encode():
            container.mux(packet)
    return starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=SIDE, help="the video's width and height (decoding cost grows with it)")
    ap.add_argument("--every", type=float, nargs="+", default=[0.5, 1, 2, 3, 5, 10])
    ap.add_argument("--out", type=Path, default=Path("/tmp/video_every.mp4"))
    args = ap.parse_args()
    engine = p2w.load("p2w-micro-fashion", mapper=None, device="cpu")
    pictures, lengths = scenes(args.scenes, args.seed, args.side)
    starts = write(args.out, pictures, lengths, args.fps)
    ends = starts + lengths
    minutes = float(ends[-1]) / 60
    queries = engine.encode_images([Image.fromarray(p) for p in pictures])
    print(
        f"{args.scenes} scenes, {minutes * 60:.0f} s at {args.fps} fps; scene lengths (s): median "
        f"{np.median(lengths):.1f}, 10% {np.quantile(lengths, 0.1):.1f}, 90% {np.quantile(lengths, 0.9):.1f}"
    )
    print("| every (s) | frames kept / min | decode s / min | embed s / min | recall@1 of scenes |")
    print("|---|---|---|---|---|")
    for every in args.every:
        start = time.perf_counter()
        kept = list(frames(args.out, every))
        decoded = time.perf_counter() - start
        vectors = engine.encode_images([f.image for f in kept])
        embedded = time.perf_counter() - start - decoded
        times = np.array([f.time for f in kept])
        best = times[np.argmax(queries @ vectors.T, axis=1)]
        recall = float(np.mean((best >= starts - 1e-6) & (best < ends)))
        print(
            f"| {every:g} | {len(kept) / minutes:.1f} | {decoded / minutes:.2f} | {embedded / minutes:.2f} | "
            f"{recall:.3f} |"
        )


if __name__ == "__main__":
    main()
