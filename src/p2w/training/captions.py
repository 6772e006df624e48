"""Caption files for LinCIR's text-only objective: reading them, and the captions as training data.

A caption file is plain text (one caption a line), JSON Lines (``.jsonl``/``.ndjson``: an object a line with a
``caption`` or ``text`` field), or the reference's CSV (``.csv``/``.tsv``: tab-separated, a header naming ``title``
or ``caption``, e.g. the Pic2Word reference's CC3M ``filepath<TAB>title``). No image is read.
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
    """Every non-blank caption of ``path`` in file order; a missing, unreadable or empty file is an error."""
    if not path.exists():
        raise P2WError(f"caption file not found: {path}")
    if path.is_dir():
        raise P2WError(f"{path} is a folder; --captions takes a file (one caption a line, JSONL or CSV)")
    text = _text(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        found = _read_jsonl(path, text)
    elif suffix in CSV_SUFFIXES:
        found = _read_csv(path, text)
    else:
        found = [Caption(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    found = [c for c in found if c.text.strip()]
    if not found:
        raise P2WError(f"no captions in {path}: it is empty (one caption a line, JSONL or CSV)")
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
