"""Rendering and writing of embeddings for the CLI: JSON on stdout, ``.npy`` files written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2w.atomic import atomic_path
from p2w.core.images import looks_like_image_path
from p2w.errors import ImageError, P2WError


def split_query_args(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``[IMAGE]... [TEXT]`` -> (images, text): existing files are the images, in order; one last argument that is
    not a file is the text. An argument that ends like an image file but does not exist is an error, not text."""
    if not args:
        raise P2WError("give a query IMAGE, a TEXT, or both")
    *head, last = args
    text = None
    if not Path(last).is_file():
        if looks_like_image_path(last):
            hint = " (to search for this text, add a word or use --mode text)" if not head else ""
            raise ImageError(f"image not found: {last}{hint}")
        text, args = last, head
    for arg in args:
        if not Path(arg).is_file():
            raise ImageError(f"image not found: {arg}")
    return list(args), text


def check_output(path: Path | None, overwrite: bool, suffix: str = ".npy") -> None:
    """Refuse early an output that would be lost or clobbered: wrong suffix, missing folder, existing file."""
    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise P2WError(f"output {path} must end in {suffix}")
    if not path.parent.is_dir():
        raise P2WError(f"folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise P2WError(f"{path} exists; pass --force to replace it")


def save_npy(vectors: Any, path: Path, overwrite: bool) -> None:
    """Write ``vectors`` to ``path`` via a temp file and rename, so a crash never leaves half a file."""
    import numpy as np

    check_output(path, overwrite)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(vectors, dtype=np.float32))


def vectors_json(records: list[dict[str, Any]], vectors: Any) -> str:
    """``[{..record, "vector": [...]}, ...]``; float32 values print exactly (they round-trip)."""
    return json.dumps([{**rec, "vector": [float(x) for x in vec]} for rec, vec in zip(records, vectors, strict=True)])


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    if not path.parent.is_dir():
        raise P2WError(f"folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")
