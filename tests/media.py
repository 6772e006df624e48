"""Test media written by the tests themselves: the embedded micro model's demo items as pictures, and videos (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from p2w.micro import world as mw
from p2w.micro.demo import gallery_items

SIDE = 64


def item(i: int, colour: int, side: int = SIDE) -> np.ndarray:
    """Shipped demo item ``i`` painted in colour ``colour``, ``side`` px square: ``(side, side, 3)`` uint8."""
    images, _, _ = gallery_items()
    rgb = mw.colourise(images[i : i + 1], np.array([colour]))[0]
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC))


def write_video(path: Path, scenes: list[tuple[np.ndarray, float]], fps: int = 10) -> Path:
    """An H.264 video of ``scenes`` (a picture, how many seconds), at ``fps``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = scenes[0][0].shape[1], scenes[0][0].shape[0]
        stream.pix_fmt = "yuv420p"
        for picture, seconds in scenes:
            for _ in range(round(seconds * fps)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
