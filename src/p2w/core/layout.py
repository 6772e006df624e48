"""clip-retrieval's embedding layout, as p2w writes and reads it (so autofaiss, clip-retrieval's back end and the LAION
tools read p2w's output, and p2w reads theirs)::

    DIR/img_emb/img_emb_{N}.npy          one row per image, L2-normalised; float16 (clip-retrieval's) or float32
    DIR/text_emb/text_emb_{N}.npy        with --text: the captions' unit embeddings (zero rows where none)
    DIR/metadata/metadata_{N}.parquet    aligned row for row: image_path (a name that is not UTF-8 shown with \\xNN,
                                         its exact bytes in image_path_bytes), caption, the json metadata flattened into
                                         columns (``a.b`` for nested keys, as pandas' json_normalize), and p2w's own
                                         ``norm`` (the features' length before normalising: vector * norm gives the
                                         image tower's output back, which mappers take) and ``hash`` (SHA-256)
    DIR/p2w.json                         the manifest: backbone, dim, dtype, preprocessing, the inputs, the parts
    DIR/report.json                      the bad inputs of the last run, by reason

``N`` is the part's number, zero-padded to the digits of the part count (``int(log10(count)) + 1``, as clip-retrieval
names them). A part is written atomically: its npy files first, each renamed into place, then its metadata, renamed
last; a part is done when its metadata file is there. Everything is readable with numpy and pyarrow alone.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2w.atomic import atomic_path
from p2w.errors import P2WError
from p2w.fspath import is_exact_text, shown

FORMAT = "p2w-embeddings"
VERSION = 1
MANIFEST = "p2w.json"
REPORT = "report.json"
DTYPES = ("float16", "float32")
PYARROW_HINT = "reading and writing the layout's parquet files needs pyarrow: pip install 'p2w[datasets]'"
# columns p2w writes; json keys of these names are dropped
_OWN = frozenset({"image_path", "image_path_bytes", "caption", "norm", "hash"})
_PART = re.compile(r"^metadata_(\d+)\.parquet$")


@dataclass(frozen=True)
class Manifest:
    """What ``p2w.json`` records: a re-run with the same inputs resumes; another backbone is refused."""

    backbone: str
    dim: int
    dtype: str
    parts: int
    rows_per_part: int
    inputs: list[dict[str, Any]]
    preprocess: dict[str, Any] = field(default_factory=dict)
    text: bool = False
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return asdict(self)

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``, None when there is none (a layout written by another tool)."""
        path = folder / MANIFEST
        try:
            data = read_record(path, FORMAT)
            return None if data is None else cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise P2WError(f"{path} is not a p2w manifest ({exc}); write to another --out") from exc


def read_record(path: Path, fmt: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` when its ``format`` is ``fmt``; None when there is no such file; a ``ValueError`` or
    ``OSError`` when it is not such a record (the caller says what to do about it)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}")
    return data


def part_name(part: int, count: int) -> str:
    """The number in a part's file names, e.g. ``part_name(7, 120) == "007"``."""
    return str(part).zfill(int(math.log10(max(count, 1))) + 1)


def paths(folder: Path, part: int, count: int) -> dict[str, Path]:
    """The files of one part: ``img``, ``text`` and ``metadata``."""
    n = part_name(part, count)
    return {
        "img": folder / "img_emb" / f"img_emb_{n}.npy",
        "text": folder / "text_emb" / f"text_emb_{n}.npy",
        "metadata": folder / "metadata" / f"metadata_{n}.parquet",
    }


def start(folder: Path, manifest: Manifest) -> set[int]:
    """Make ``folder`` a layout for ``manifest``, or check that it is one already; returns the parts already done.

    An existing layout of another backbone, dtype or inputs is refused: its parts would mix with these.
    """
    old = Manifest.read(folder)
    if old is not None:
        check_same(folder, old, manifest)
    elif folder.is_dir() and any(folder.iterdir()):
        raise P2WError(f"{folder} is not empty and holds no p2w manifest; write to a new or empty --out")
    for sub in ("img_emb", "metadata", *(("text_emb",) if manifest.text else ())):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for stale in (folder / sub).glob(".*.tmp"):  # p2w's own temporary files, left by a run killed mid-write
            stale.unlink(missing_ok=True)
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=1), encoding="utf-8")
    return done(folder, manifest.parts)


def check_same(folder: Path, old: Manifest, new: Manifest) -> None:
    """Refuse to add ``new``'s parts to a layout started as ``old``: another backbone, dtype, inputs or split."""
    if old.backbone != new.backbone:
        raise P2WError(
            f"{folder} holds embeddings of {old.backbone}, not {new.backbone}: vectors of two models never mix; "
            "write to another --out"
        )
    for name in ("dtype", "rows_per_part", "text", "inputs", "parts"):
        if getattr(old, name) != getattr(new, name):
            raise P2WError(
                f"{folder} was started with other {name.replace('_', ' ')} ({getattr(old, name)!r}); resume it with "
                "the same sources and options, or write to another --out"
            )


def done(folder: Path, count: int) -> set[int]:
    """The parts whose metadata file is there (written last: the part is complete)."""
    meta = folder / "metadata"
    found = (int(m.group(1)) for p in meta.iterdir() if (m := _PART.match(p.name))) if meta.is_dir() else ()
    return {n for n in found if n < count}


def write_part(
    folder: Path,
    part: int,
    count: int,
    vectors: np.ndarray,
    metadata: Mapping[str, Sequence[Any]],
    dtype: str = "float16",
    text: np.ndarray | None = None,
) -> None:
    """Write one part: ``vectors`` ``(n, dim)`` unit rows, ``metadata`` columns of n values each (``image_path``,
    ``caption``, ``norm``, ``hash``, and ``meta``: one dict per row, flattened into columns), ``text`` ``(n, dim)``."""
    files = paths(folder, part, count)
    _save_npy(files["img"], vectors.astype(dtype, copy=False))
    if text is not None:
        _save_npy(files["text"], text.astype(dtype, copy=False))
    columns = _exact_paths({k: v for k, v in metadata.items() if k != "meta"})
    table = _table(columns, metadata.get("meta"))
    pq = pyarrow_parquet()
    with atomic_path(files["metadata"]) as tmp:
        pq.write_table(table, tmp)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)


def _exact_paths(columns: dict[str, Sequence[Any]]) -> dict[str, Sequence[Any]]:
    """``image_path`` is text (clip-retrieval's column, read by tools that expect UTF-8): a name that is not UTF-8 is
    written as ``p2w.fspath.shown`` shows it, and its exact bytes go to ``image_path_bytes`` (``image_path_of``)."""
    paths = columns.get("image_path")
    if not paths or all(p is None or is_exact_text(p) for p in paths):
        return columns
    return {**columns, "image_path": [None if p is None else shown(p) for p in paths],
            "image_path_bytes": [None if p is None or is_exact_text(p) else os.fsencode(p) for p in paths]}  # fmt: skip


def image_path_of(row: Mapping[str, Any]) -> str:
    """A metadata row's exact ``image_path`` (from ``image_path_bytes`` where the name is not UTF-8), or ""."""
    exact = row.get("image_path_bytes")
    return os.fsdecode(exact) if exact else str(row.get("image_path") or "")


def _table(columns: Mapping[str, Sequence[Any]], metas: Sequence[Mapping[str, Any]] | None) -> Any:
    """A pyarrow table of p2w's columns and the json metadata flattened; a column pyarrow cannot type as it is
    (mixed types across rows) is written as JSON text."""
    import pyarrow as pa

    out: dict[str, Any] = dict(columns)
    flat = [flatten(m) for m in metas] if metas else []
    names = list(dict.fromkeys(k for row in flat for k in row if k not in _OWN))
    for name in names:
        out[name] = [row.get(name) for row in flat]
    arrays = {}
    for name, values in out.items():
        try:
            arrays[name] = pa.array(list(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):  # mixed types; text that is not UTF-8
            arrays[name] = pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
    return pa.table(arrays)


def flatten(meta: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys joined with ``.``, as pandas' ``json_normalize`` does, e.g. ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or a one-line error saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise P2WError(PYARROW_HINT) from exc
    return pq


def write_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """``DIR/report.json``: what the last run found bad, by reason."""
    with atomic_path(folder / REPORT) as tmp:
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return folder / REPORT


# ---- reading --------------------------------------------------------------------------------------------------------
def vector_files(folder: Path) -> list[Path]:
    """The image embedding files in part order (p2w's or another tool's layout)."""
    files = sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise P2WError(f"no img_emb/img_emb_*.npy under {folder}; make them with: p2w embed dataset SOURCE --out DIR")
    return files


def vectors(folder: Path) -> list[np.ndarray]:
    """Every part's vectors, memory-mapped (nothing is read until used)."""
    return [np.load(p, mmap_mode="r") for p in vector_files(folder)]


def metadata_file(vectors_file: Path) -> Path:
    """The metadata parquet of an ``img_emb_N.npy``."""
    n = vectors_file.stem.rsplit("_", 1)[1]
    return vectors_file.parent.parent / "metadata" / f"metadata_{n}.parquet"


def read_columns(vectors_file: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    """Columns of a part's metadata (absent ones are None per row: a layout made by another tool has no ``norm``)."""
    pq = pyarrow_parquet()
    path = metadata_file(vectors_file)
    schema = pq.read_schema(path)
    there = [c for c in columns if c in schema.names]
    table = pq.read_table(path, columns=there)
    out = {c: table.column(c).to_pylist() for c in there}
    return {c: out.get(c, [None] * table.num_rows) for c in columns}
