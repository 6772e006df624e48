"""The colour world: Fashion-MNIST items (Zalando Research, MIT licence) colourised with one of eight colours.

The world of p2w's embedded micro CLIP (``p2w-micro-fashion``), its demo and its quality benchmark. An item is a
28x28 grey Fashion-MNIST image; ``colourise`` paints it in a colour on black and centres it in a 32x32 RGB image.

Fashion-MNIST: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", 2017, https://github.com/zalandoresearch/fashion-mnist (MIT licence).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2w.errors import P2WError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import torch

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass --data DIR"
SIZE = 32  # side of a world image
COLOURS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 20),
    "green": (30, 170, 60),
    "blue": (40, 90, 235),
    "purple": (140, 50, 200),
    "pink": (255, 110, 190),
    "brown": (140, 85, 35),
}
COLOUR_NAMES = tuple(COLOURS)
CLASSES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# the captions the micro CLIP was trained on; {c} a colour, {k} a class
CAPTIONS = (
    "a {c} {k}.",
    "a photo of a {c} {k}.",
    "a {k} in {c}.",
    "a photo of a {k} , in {c}.",
    "{c} {k}",
)
# and these, which name one attribute only, so that the text tower also reads a class or a colour on its own
# (without them the averaging baseline beat Pic2Word on class changes: docs/microworld.md)
PARTIAL_CAPTIONS = ("a {k}.", "a photo of a {k}.", "something {c}.", "a {c} thing.")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Items:
    """Grey items ``(n, 28, 28)`` uint8 and their class indices ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> Items:
        """The items at ``rows``."""
        return Items(self.images[rows], self.labels[rows])


def find_files(split: str, data: Path | None = None) -> list[Path]:
    """The images and labels IDX files of ``split`` in ``data`` (gzipped or not), or a one-line error."""
    data = Path(data or DEFAULT_DATA).expanduser()
    if split not in FILES:
        raise P2WError(f"unknown Fashion-MNIST split {split!r}; use train or test")
    found = []
    for name in FILES[split]:
        path = next((p for p in (data / name, data / name.removesuffix(".gz")) if p.is_file()), None)
        if path is None:
            raise P2WError(f"Fashion-MNIST file {name} not found in {data}; {INSTALL_HINT}")
        found.append(path)
    return found


def load_items(split: str, data: Path | None = None) -> Items:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) items from the IDX files (gzipped or not) in ``data``."""
    import numpy as np

    data = Path(data or DEFAULT_DATA).expanduser()
    images, labels = (_read_idx(path) for path in find_files(split, data))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise P2WError(
            f"{data} does not hold Fashion-MNIST {split} files (images {images.shape}, labels {labels.shape})"
        )
    return Items(images, labels.astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    import numpy

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise P2WError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise P2WError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = numpy.frombuffer(raw, dtype=numpy.uint8, offset=4 + 4 * ndim)
    if body.size != int(numpy.prod(dims)):
        raise P2WError(f"{path} is truncated ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def colourise(images: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Items ``(n, 28, 28)`` uint8 painted in colour indices ``(n,)`` -> RGB ``(n, 32, 32, 3)`` uint8 on black."""
    import numpy as np

    palette = np.array(list(COLOURS.values()), dtype=np.float32)  # (8, 3)
    alpha = images.astype(np.float32)[..., None] / 255.0  # (n, 28, 28, 1)
    painted = np.rint(alpha * palette[np.asarray(colours)][:, None, None, :]).astype(np.uint8)
    out = np.zeros((len(images), SIZE, SIZE, 3), dtype=np.uint8)
    pad = (SIZE - 28) // 2
    out[:, pad : pad + 28, pad : pad + 28] = painted
    return out


def all_captions(partial: bool = True) -> list[str]:
    """Every training caption, class-major, then colour, then template (``CAPTIONS`` then ``PARTIAL_CAPTIONS``):
    row ``(class * len(COLOURS) + colour) * templates + template``."""
    templates = [*CAPTIONS, *(PARTIAL_CAPTIONS if partial else ())]
    return [t.format(c=c, k=k) for k in CLASSES for c in COLOUR_NAMES for t in templates]


def pixels(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB ``(n, 32, 32, 3)`` uint8 -> normalised ``(n, 3, 32, 32)`` float32: for 32x32 images exactly what a 32 px
    model's preprocessing gives (resize and crop are identities), without PIL."""
    import torch

    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def caption(label: int, colour: int, template: int = 0) -> str:
    """E.g. ``caption(3, 0)`` -> ``"a red dress."``."""
    return CAPTIONS[template].format(c=COLOUR_NAMES[colour], k=CLASSES[label])


def balanced_rows(labels: np.ndarray, per_class: int, seed: int, skip: int = 0) -> np.ndarray:
    """``per_class`` seeded random rows of every class, sorted (a class with fewer rows gives all it has); ``skip``
    passes over that many of each class's seeded order first, so ``skip=per_class`` gives rows disjoint from
    ``skip=0``'s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(labels == k))[skip : skip + per_class] for k in range(len(CLASSES))]
    return np.sort(np.concatenate(rows))


def save_images(rgb: np.ndarray, folder: Path, names: list[str]) -> list[Path]:
    """Write RGB images ``(n, H, W, 3)`` as PNG files ``folder/NAME.png``; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(rgb, names, strict=True):
        path = folder / f"{name}.png"
        Image.fromarray(image, "RGB").save(path, optimize=False, compress_level=1)
        paths.append(path)
    return paths
