"""Reading inputs: folders, path lists (.txt, .csv, .tsv, .parquet) and webdataset shards, as one stream of samples.

``plan`` turns the sources named on a command line into ``Part``s, the unit of work, of atomic writing and of resume;
``read`` yields one part's ``Sample``s. Its rules:

- Bad inputs are counted in ``Problems`` by reason, with their place, never fatal and never silently dropped. Only
  what makes the request itself wrong stops ``plan`` (a ``P2WError``, before any part is read): a missing source, a
  pattern that names nothing, a list without a path column, a URL scheme whose fsspec backend is not installed.
- The same sources give the same parts, ids and rows: folders walked and sorted, lists in their order, shards in the
  order expanded or given.
- Shards are streamed (never extracted, never whole in memory) and grouped into samples by key as webdataset does.
"""

from __future__ import annotations

import csv
import glob
import itertools
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from p2w.core.images import IMAGE_SUFFIXES
from p2w.core.samples import NO_META, Part, Problems, Row, Sample
from p2w.core.shards import TAR_SUFFIXES, URL, check_backend, expand_braces, read_shard, url_shard

__all__ = ["Part", "Plan", "Problems", "Row", "Sample", "expand_braces", "plan", "read"]
from p2w.core.walk import scan
from p2w.errors import P2WError, summary
from p2w.fspath import is_exact_text, shown

PATH_COLUMNS = ("image_path", "path", "filepath", "filename")  # a list's path column: the first present
CAPTION_COLUMNS = ("caption", "text", "title")
LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".parquet")
PARQUET_BATCH = 65_536  # rows read at a time from a .parquet list
KINDS = "a folder, a list (.txt, .csv, .tsv, .parquet), webdataset shards (.tar, .tar.gz, .tgz) or images"

_Facts = tuple[int, int] | None  # (size, mtime_ns) of what a source names
_GLOB = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Plan:
    """The parts to read, the sources as given (for the manifest: a re-run compares them), what planning found bad."""

    parts: list[Part]
    inputs: list[dict[str, Any]]  # {"source", "kind", "size", "mtime_ns", "matches"} a source as given
    problems: Problems


@dataclass(frozen=True)
class _Options:
    rows_per_part: int
    path_column: str | None
    caption_column: str | None


def plan(
    sources: Sequence[str],
    rows_per_part: int = 10_000,
    path_column: str | None = None,
    caption_column: str | None = None,
    other_files_are_lists: bool = False,
) -> Plan:
    """The parts that ``sources`` make, e.g. ``plan(["photos/", "shards/{00000..00099}.tar"])``.

    A folder or a list becomes "files" parts of ``rows_per_part`` rows; a shard (a path, a brace or glob pattern, or
    a URL read through fsspec) is one "tar" part. Every source is checked (exists, names something, can be read)
    before any is walked or read. ``inputs`` describes each source as given: its kind ("folder", "list", "tar",
    "image", or "mixed" for a pattern naming several kinds), total ``size`` and newest ``mtime_ns`` of what it names
    (for a folder, of its images; None for URLs), and ``matches``, how many paths it named.
    ``other_files_are_lists``: a file of another suffix is a list, a path a line (``p2w train``'s list files),
    not an error.
    """
    if rows_per_part < 1:
        raise P2WError(f"rows per part must be at least 1, not {rows_per_part}")
    if not sources:
        raise P2WError(f"no sources given; name {KINDS}")
    resolved = [(source, _resolve(source, other_files_are_lists)) for source in sources]
    options = _Options(rows_per_part, path_column, caption_column)
    problems = Problems()
    parts: list[Part] = []
    inputs = []
    for source, targets in resolved:
        facts = [_plan_target(kind, target, parts, options, problems) for kind, target in targets if kind != "image"]
        images = [os.path.abspath(target) for kind, target in targets if kind == "image"]
        _add_files(parts, source, (Row(path) for path in images), rows_per_part)
        facts.extend(_stat(path) for path in images)
        inputs.append(_describe(source, targets, facts))
    return Plan(parts, inputs, problems)


def read(part: Part, problems: Problems) -> Iterator[Sample]:
    """The samples of ``part``, in order; bad ones are counted in ``problems`` and skipped or kept as described below.

    "files": each file is checked with ``os.stat``, not opened (decoding is the caller's, who counts what fails):
    "not found" when missing, "unreadable file" when it cannot be stat'ed or is not a regular file. "tar": "no image"
    for a key without a jpg/jpeg/png/webp member (skipped), "caption not UTF-8" (kept, caption None), "bad json"
    (kept, meta {}), "unreadable shard" for one that cannot be opened or is cut short or corrupt: reading stops
    there, the samples before it are kept, the one being read is dropped.
    """
    if part.kind == "tar":
        return read_shard(part.source, problems)
    if part.kind == "files":
        return _read_files(part, problems)
    raise P2WError(f"unknown part kind {part.kind!r}; plan the sources again with this version of p2w")


def _resolve(source: str, other_files_are_lists: bool = False) -> list[tuple[str, str]]:
    """``(kind, path or URL)`` for each thing ``source`` names, in order; a P2WError when any of it is missing."""
    names = expand_braces(source)
    if URL.match(source):
        check_backend(source)
        return [("tar", url_shard(name)) for name in names]
    paths: list[str] = []
    missing: list[str] = []
    for name in map(os.path.expanduser, names):
        matches = [name] if os.path.exists(name) else sorted(glob.glob(name)) if _GLOB.search(name) else []
        paths.extend(matches)
        if not matches:
            missing.append(name)
    if len(missing) == len(names) and (len(names) > 1 or _GLOB.search(source)):
        raise P2WError(f"{shown(source)} matches nothing; check the pattern ({{00000..00099}}, {{a,b}} and * expand)")
    if len(names) == 1 and missing:
        raise P2WError(f"source not found: {shown(source)}; name {KINDS}")
    if missing:
        raise P2WError(
            f"{len(missing)} of the {len(names)} paths {shown(source)} names do not exist (the first: "
            f"{shown(missing[0])}); fix the pattern, or name the shards that exist"
        )
    # absolute: a Ray worker may run elsewhere
    resolved = [(_kind(path, other_files_are_lists), os.path.abspath(path)) for path in paths]
    return [pair for kind, path in resolved for pair in (_shard_folder(path) if kind == "folder" else [(kind, path)])]


def _shard_folder(folder: str) -> list[tuple[str, str]]:
    """A folder of webdataset shards (img2dataset's output: ``00000.tar``, ``00000.parquet``, ``00000_stats.json``)
    is its shards, in name order; any other folder is a folder of images."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return [("folder", folder)]  # the walker reports it
    shards = [n for n in names if n.lower().endswith(TAR_SUFFIXES)]
    if not shards or any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
        return [("folder", folder)]
    return [("tar", os.path.join(folder, n)) for n in shards]


def _kind(path: str, other_files_are_lists: bool = False) -> str:
    lower = path.lower()
    if os.path.isdir(path):
        return "folder"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(LIST_SUFFIXES):
        return "list"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    if other_files_are_lists:
        return "list"
    raise P2WError(f"{shown(path)} is not {KINDS}; rename it, or narrow the pattern that named it")


def _plan_target(kind: str, target: str, parts: list[Part], options: _Options, problems: Problems) -> _Facts:
    """Append the parts of one folder, list or shard; its size and newest mtime (None for a URL)."""
    if kind == "tar":
        parts.append(Part(len(parts), "tar", target))
        return None if URL.match(target) else _stat(target)
    before = (len(parts), len(problems))
    rows: Iterable[Row]
    if kind == "folder":
        rows, facts = _folder_rows(target, problems)
    else:
        rows, facts = _list_rows(target, options, problems), _stat(target)
    _add_files(parts, target, rows, options.rows_per_part)
    if (len(parts), len(problems)) == before:
        raise P2WError(f"no images in {shown(target)} (looked for {', '.join(IMAGE_SUFFIXES)}); name another source")
    return facts


def _stat(path: str) -> _Facts:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _describe(source: str, targets: list[tuple[str, str]], facts: list[_Facts]) -> dict[str, Any]:
    kinds = {kind for kind, _ in targets}
    known = [f for f in facts if f is not None]
    whole = len(known) == len(facts)
    return {
        "source": source,
        "kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "size": sum(size for size, _ in known) if whole else None,
        "mtime_ns": max((mtime for _, mtime in known), default=0) if whole else None,
        "matches": len(targets),
    }


def _add_files(parts: list[Part], source: str, rows: Iterable[Row], rows_per_part: int) -> None:
    it = iter(rows)
    while chunk := tuple(itertools.islice(it, rows_per_part)):
        parts.append(Part(len(parts), "files", source, chunk))


def _folder_rows(folder: str, problems: Problems) -> tuple[list[Row], _Facts]:
    """The images under ``folder``, sorted; its folders that cannot be listed and files that cannot be read counted."""
    unreadable: list[tuple[str, str]] = []
    found = sorted(scan([Path(folder)], unreadable=unreadable), key=lambda f: f.path)
    for path, why in unreadable:
        problems.add(
            "unlistable folder" if why.startswith("cannot be listed") else "unreadable file", f"{path} ({why})"
        )
    facts = sum(f.size for f in found), max((f.mtime_ns for f in found), default=0)
    return [Row(f.path) for f in found], facts


def _list_rows(path: str, options: _Options, problems: Problems) -> Iterator[Row]:
    """A list's rows, streamed; a list that cannot be read at all is a P2WError, a bad row a problem."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            yield from _parquet_rows(path, options, problems)
        elif lower.endswith((".csv", ".tsv")):
            yield from _csv_rows(path, options, problems)
        else:  # .txt, or a list file of another suffix (``other_files_are_lists``)
            yield from _txt_rows(path)
    except (OSError, ValueError, csv.Error) as exc:
        raise P2WError(f"cannot read the list {shown(path)}: {summary(exc)}") from exc


def _open_text(path: str) -> IO[str]:
    """Paths that are not UTF-8 survive as surrogate escapes (``p2w.fspath``); a byte-order mark is dropped."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _txt_rows(path: str) -> Iterator[Row]:
    base = os.path.dirname(os.path.abspath(path))
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield Row(_join(base, entry), None, NO_META, number)


def _csv_rows(path: str, options: _Options, problems: Problems) -> Iterator[Row]:
    """A .csv or .tsv list (tab-separated when its first line holds a tab), its first line naming the columns."""
    with _open_text(path) as f:
        first = f.readline()
        tabs = path.lower().endswith(".tsv") or "\t" in first
        reader = csv.reader(itertools.chain([first], f), delimiter="\t" if tabs else ",")
        header = next(reader, None)
        if header is None:
            return
        columns = _Columns.pick([name.strip() for name in header], path, options)
        base = os.path.dirname(os.path.abspath(path))
        for cells in reader:
            if any(cell.strip() for cell in cells):  # blank lines are not rows
                row = columns.row(cells, base, f"{path}:{reader.line_num}", reader.line_num, problems)
                if row is not None:
                    yield row


def _parquet_rows(path: str, options: _Options, problems: Problems) -> Iterator[Row]:
    """A .parquet list, read in batches of ``PARQUET_BATCH`` rows."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise P2WError(f"reading {shown(path)} needs pyarrow: pip install pyarrow") from exc
    base = os.path.dirname(os.path.abspath(path))
    number = 0
    with pq.ParquetFile(path) as table:
        columns = _Columns.pick(list(table.schema_arrow.names), path, options)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH):
            for cells in zip(*(column.to_pylist() for column in batch.columns), strict=True):
                number += 1
                row = columns.row(cells, base, f"{path}:row {number}", number, problems)
                if row is not None:
                    yield row


@dataclass(frozen=True)
class _Columns:
    """Which of a list's columns hold the path and the caption; the others go to ``meta``."""

    path: int
    caption: int | None
    others: tuple[tuple[int, str], ...]

    @classmethod
    def pick(cls, names: list[str], source: str, options: _Options) -> _Columns:
        path = _column(names, options.path_column, PATH_COLUMNS, source, "--path-column")
        if path is None:
            raise P2WError(
                f"{shown(source)} has no path column (its first line names: {', '.join(names)}); name the column "
                f"with --path-column, or call it one of {', '.join(PATH_COLUMNS)}"
            )
        caption = _column(names, options.caption_column, CAPTION_COLUMNS, source, "--caption-column")
        return cls(path, caption, tuple((i, name) for i, name in enumerate(names) if i not in (path, caption)))

    def row(self, cells: Sequence[Any], base: str, where: str, number: int, problems: Problems) -> Row | None:
        """The row of one line's cells, or None (counted as "no path") when its path cell is empty."""
        value = cells[self.path] if self.path < len(cells) else None
        entry = str(value).strip() if value is not None else ""
        if not entry:
            problems.add("no path", where)
            return None
        caption = _caption(cells[self.caption] if self.caption is not None and self.caption < len(cells) else None)
        if caption is not None and not is_exact_text(caption):
            problems.add("caption not UTF-8", where)
            caption = None
        meta = {name: cells[i] for i, name in self.others if i < len(cells)}
        return Row(_join(base, entry), caption, meta or NO_META, number)


def _column(names: list[str], given: str | None, defaults: Sequence[str], source: str, option: str) -> int | None:
    """The index of ``given`` (or of the first of ``defaults``) in ``names``: exact, then ignoring case."""
    for wanted in (given,) if given else defaults:
        for i, name in enumerate(names):
            if name == wanted or name.lower() == wanted.lower():
                return i
    if given:
        raise P2WError(f"{shown(source)} has no column {given!r} (it has: {', '.join(names)}); pass {option} with one")
    return None


def _caption(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else None if value is None else str(value)
    return text or None


def _join(base: str, entry: str) -> str:
    """``entry`` made absolute against the list's folder, e.g. ``_join("/data", "img/a.jpg") == "/data/img/a.jpg"``."""
    if entry.startswith("~"):
        entry = os.path.expanduser(entry)
    return os.path.normpath(os.path.join(base, entry))


def _read_files(part: Part, problems: Problems) -> Iterator[Sample]:
    for row in part.rows:
        where = f"{part.source}:{row.line}: {row.path}" if row.line else row.path
        try:
            mode = os.stat(row.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            problems.add("not found", where)
            continue
        except OSError as exc:
            problems.add("unreadable file", f"{where} ({summary(exc)})")
            continue
        if not stat.S_ISREG(mode):
            problems.add("unreadable file", f"{where} (not a regular file)")
            continue
        yield Sample(row.path, row.path, None, row.caption, dict(row.meta))
