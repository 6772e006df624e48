"""One part's rows, decoded as ``p2w index`` decodes a photo: the image's bytes read once (hashed, then decoded with
JPEG draft decoding at the model's input size), resized and cropped by the backbone's own transform to uint8 pixels;
``finish`` applies the rest of the transform (to tensor, normalise). Decoding runs where it is cheap to scale (in
DataLoader workers, or Ray CPU tasks) and ships uint8, four times smaller than the float tensor."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2w.core.images import decode_image
from p2w.core.sources import Part, Problems, Sample, read
from p2w.errors import ImageError


@dataclass
class Decoded:
    """A row of a part: where it is in the part, what the layout records of it, and its pixels (None: ``reason``)."""

    index: int
    key: str
    caption: str | None
    meta: dict[str, Any]
    hash: str = ""
    pixels: Any = None  # uint8 (H, W, 3) after the backbone's resize and crop, or whatever the split transform gives
    reason: str = ""


@dataclass(frozen=True)
class Transform:
    """The backbone's preprocessing split where it leaves PIL: ``crop`` (resize, crop, mode) runs where images are
    decoded, ``finish`` (to tensor, normalise) where the tower runs; ``draft`` is the JPEG draft size."""

    crop: Any
    finish: Any
    draft: int

    @classmethod
    def of(cls, preprocess: Any, draft: int) -> Transform:
        """Split a torchvision ``Compose`` at its to-tensor step (``preprocess`` whole where there is none)."""
        steps = list(getattr(preprocess, "transforms", []))
        at = next((i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__), None)
        if at is None:
            return cls(preprocess, _identity, draft)
        from torchvision.transforms import Compose

        return cls(Compose(steps[:at]), Compose(steps[at:]), draft)


def _identity(x: Any) -> Any:
    return x


def decode(sample: Sample, index: int, transform: Transform) -> Decoded:
    """One sample read, hashed, decoded and cropped; a file that cannot be read or decoded keeps its reason."""
    row = Decoded(index, sample.key, sample.caption, sample.meta)
    try:
        data = sample.data if sample.data is not None else Path(str(sample.path)).read_bytes()
    except OSError as exc:
        row.reason = f"cannot be read ({exc.strerror or type(exc).__name__})"
        return row
    row.hash = hashlib.sha256(data).hexdigest()
    try:
        image = transform.crop(decode_image(data, sample.key, draft=transform.draft))
    except ImageError as exc:
        row.reason = str(exc)
        return row
    except Exception as exc:  # a decoder bug on a hostile file must not stop a dataset
        row.reason = f"{sample.key} cannot be decoded ({type(exc).__name__}: {exc})"
        return row
    row.pixels = np.array(image) if image.__class__.__module__.startswith("PIL") else image  # writable: to_tensor
    return row


def reason_kind(reason: str) -> str:
    """The reason a row was dropped, without the file's name: what ``Problems`` counts rows by."""
    for kind in ("too large", "not an image", "cannot be decoded", "cannot be read", "not found"):
        if kind in reason:
            return kind
    return reason


def pixels(rows: list[Decoded], transform: Transform) -> torch.Tensor:
    """The batch ``(n, 3, H, W)`` float32 of decoded rows: the rest of the backbone's transform."""
    return torch.stack([transform.finish(r.pixels) for r in rows])


@dataclass
class Tally:
    """What a reader found bad in a part (sent once, by the first reader of the part)."""

    problems: Problems = field(default_factory=Problems)


class PartRows(torch.utils.data.IterableDataset[Any]):
    """A part's rows, decoded; several DataLoader workers share the part row by row (each reads the part and decodes
    its own rows), and the first of them also yields the part's ``Tally`` at the end."""

    def __init__(self, part: Part, transform: Transform) -> None:
        self.part, self.transform = part, transform

    def __iter__(self) -> Iterator[Decoded | Tally]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tally = Tally()
        for index, sample in enumerate(read(self.part, tally.problems)):
            if index % workers == worker:
                yield decode(sample, index, self.transform)
        if worker == 0:
            yield tally


def gather(items: Iterable[Decoded | Tally]) -> tuple[list[Decoded], Problems]:
    """A part's decoded rows and what its readers found bad, from what ``PartRows`` yields (here or from workers)."""
    rows: list[Decoded] = []
    problems = Problems()
    for item in items:
        if isinstance(item, Tally):
            problems.merge(item.problems)
        else:
            rows.append(item)
    return rows, problems


def decode_part(part: Part, transform: Transform) -> tuple[list[Decoded], Problems]:
    """Every row of a part decoded in this process (a Ray CPU task's work), and what was found bad."""
    return gather(PartRows(part, transform))
