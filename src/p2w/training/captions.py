"""Caption files for LinCIR's text-only objective: reading them, and the captions as training data.

A caption file is plain text (one caption a line), JSON Lines (``.jsonl``/``.ndjson``: an object a line with a
``caption`` or ``text`` field), or the reference's CSV (``.csv``/``.tsv``: tab-separated, a header naming ``title``
or ``caption``, e.g. the Pic2Word reference's CC3M ``filepath<TAB>title``). Captions also come from the sources
``p2w embed dataset`` reads (``p2w.core.sources``): webdataset shards (their ``txt`` members: a shard, a brace pattern,
a folder of shards) and ``.parquet`` lists (their caption column), and from a layout (its metadata's ``caption``
column). No image is decoded.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from p2w.errors import P2WError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")
JSON_FIELDS = ("caption", "text")
CSV_COLUMNS = ("title", "caption")


@dataclass(frozen=True)
class Caption:
    """A caption as read (``text``) and where: ``line`` numbers the file's lines from 1."""

    line: int
    text: str


def read_captions(path: Path) -> list[Caption]:
    """Every non-blank caption of ``path`` in file (or source) order; ``line`` numbers a file's lines, or a source's
    rows; a missing, unreadable or empty source is an error."""
    if (path / "metadata").is_dir():
        found = _layout_captions(path)
    elif _is_source(path):
        found = _source_captions(str(path))
    else:
        found = _file_captions(path)
    found = [c for c in found if c.text.strip()]
    if not found:
        raise P2WError(f"no captions in {path} (one caption a line, JSONL, CSV, shards with .txt members, a layout)")
    return found


def _is_source(path: Path) -> bool:
    """Shards (a folder of them too) or a parquet list: what ``p2w.core.sources`` reads."""
    name = str(path).lower()
    if path.is_dir():
        if not any(p.suffix.lower() == ".tar" for p in path.iterdir()):
            raise P2WError(f"{path} is a folder without shards; --captions takes a caption file, shards or a layout")
        return True
    return name.endswith((".tar", ".tar.gz", ".tgz", ".parquet")) or "{" in name


def _source_captions(source: str) -> list[Caption]:
    from p2w.core.sources import Problems, plan, read

    found = plan([source])
    problems = Problems()
    rows = (s.caption for part in found.parts for s in read(part, problems))
    return [Caption(i, text) for i, text in enumerate(rows, 1) if text]


def _layout_captions(folder: Path) -> list[Caption]:
    from p2w.core import layout

    texts = (t for f in layout.vector_files(folder) for t in layout.read_columns(f, ["caption"])["caption"])
    return [Caption(i, text) for i, text in enumerate(texts, 1) if text]


def _file_captions(path: Path) -> list[Caption]:
    if not path.exists():
        raise P2WError(f"caption file not found: {path}")
    text = _text(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        found = _read_jsonl(path, text)
    elif suffix in CSV_SUFFIXES:
        found = _read_csv(path, text)
    else:
        found = [Caption(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    return found


def _read_jsonl(path: Path, text: str) -> list[Caption]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise P2WError(f"{path} line {i}: not JSON ({exc.msg})") from exc
        value = next((obj[k] for k in JSON_FIELDS if isinstance(obj, dict) and k in obj), None)
        if not isinstance(value, str):
            fields = " or ".join(repr(k) for k in JSON_FIELDS)
            raise P2WError(f"{path} line {i}: no {fields} field with a string (each line is an object with one)")
        out.append(Caption(i, value))
    return out


def _read_csv(path: Path, text: str) -> list[Caption]:
    """Tab-separated with a header; the ``title`` (the reference's) or ``caption`` column."""
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    column = next((header.index(c) for c in CSV_COLUMNS if c in header), None)
    if column is None:
        raise P2WError(
            f"{path}: the first line must name the columns, one of them 'title' or 'caption' (tab-separated)"
        )
    return [Caption(i, row[column]) for i, row in enumerate(rows[1:], 2) if len(row) > column]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise P2WError(f"cannot read caption file {path}: {exc}") from exc
