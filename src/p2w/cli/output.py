"""Rendering and writing of embeddings for the CLI: JSON on stdout, ``.npy`` files written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2w.atomic import atomic_path
from p2w.core.images import looks_like_image_path
from p2w.errors import ImageError, P2WError


def split_query_args(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    """``[IMAGE] [TEXT]`` -> (image, text): with one argument, an existing file is the image, else it is text."""
    if second is not None:
        if not Path(first or "").is_file():
            raise ImageError(f"image not found: {first}")
        return first, second
    if first is None:
        raise P2WError("give a query IMAGE, a TEXT, or both")
    if Path(first).is_file():
        return first, None
    if looks_like_image_path(first):
        raise ImageError(f"image not found: {first} (to search for this text, add a word or use --mode text)")
    return None, first


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
