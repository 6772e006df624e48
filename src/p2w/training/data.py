"""Training inputs: a folder (walked as ``p2w index`` walks it: ``p2w.core.walk``), a list file (a path a line), or
the reference CSV (filepath<TAB>title)."""

from __future__ import annotations

import csv
from pathlib import Path

from p2w.core.images import IMAGE_SUFFIXES
from p2w.core.walk import scan
from p2w.errors import P2WError


def list_images(source: Path) -> list[Path]:
    """Image paths named by ``source``, sorted and de-duplicated; an empty source is an error."""
    if not source.exists():
        raise P2WError(f"training data not found: {source}")
    if source.is_dir():
        paths = [Path(found.path) for found in scan([source])]
    elif source.suffix.lower() in (".csv", ".tsv"):
        paths = _read_csv(source)
    else:
        paths = _read_list(source)
    unique = sorted(dict.fromkeys(paths))
    if not unique:
        raise P2WError(f"no images found in {source} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return unique


def _read_list(path: Path) -> list[Path]:
    base = path.parent
    lines = (line.strip() for line in _text(path).splitlines())
    return [_resolve(base, line) for line in lines if line and not line.startswith("#")]


def _read_csv(path: Path) -> list[Path]:
    """The reference's CC3M CSV: tab-separated with a header naming ``filepath`` (titles are ignored)."""
    rows = list(csv.reader(_text(path).splitlines(), delimiter="\t"))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "filepath" not in header:
        raise P2WError(f"{path}: the first line must name the columns, one of them 'filepath' (tab-separated)")
    col = header.index("filepath")
    return [_resolve(path.parent, row[col].strip()) for row in rows[1:] if len(row) > col and row[col].strip()]


def _resolve(base: Path, entry: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else base / p


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise P2WError(f"cannot read {path}: {exc}") from exc
