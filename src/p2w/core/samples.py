"""The values a source reader hands over: a ``Sample`` (one input row), a ``Part`` (a unit of work, of atomic
writing and of resume) and its ``Row``s, and ``Problems`` (bad inputs counted by reason). Small and picklable: parts go
to Ray workers and problems come back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from p2w.fspath import shown

EXAMPLES = 5  # places kept per reason
NO_META: dict[str, Any] = {}  # shared by the rows of a million-line list; never changed, copied into each Sample


@dataclass(frozen=True)
class Sample:
    """One input row."""

    key: str  # what the layout's `image_path` column holds: a file's absolute path, or a shard member's __key__
    path: str | None  # a local image file to open (folder and list sources), else None
    data: bytes | None  # the image's bytes (webdataset members), else None
    caption: str | None
    meta: dict[str, Any]  # a shard's .json member (parsed), or a list's other columns; {} when none


class Row(NamedTuple):
    """A row of a "files" part: an absolute path, its caption and meta, its line in the list (0: from a folder)."""

    path: str
    caption: str | None = None
    meta: dict[str, Any] = NO_META
    line: int = 0  # a .txt/.csv/.tsv list's line number (its header is line 1), or a .parquet list's row number


@dataclass(frozen=True)
class Part:
    """A unit of work, of atomic writing and of resume: picklable, small (it is sent to Ray workers)."""

    id: int  # 0..n-1, its position in the plan
    kind: str  # "files" (a list of local files) or "tar" (one webdataset shard)
    source: str  # the shard's path or URL; for "files": the folder or list file the rows come from
    rows: tuple[Row, ...] = ()  # for "files": the rows of this part, in order; () for "tar"


class Problems:
    """Bad inputs counted by reason, with a few places each, e.g. ``add("not found", "list.txt:7: /a/b.jpg")``;
    never fatal, never silently dropped; picklable (Ray workers return theirs to be merged)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> None:
        """Count one bad input; the first few places of each reason are kept."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        examples = self._examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(where)

    def counts(self) -> dict[str, int]:
        """``{reason: count}``, e.g. ``{"no image": 2, "not found": 1}``."""
        return dict(self._counts)

    def examples(self, reason: str) -> list[str]:
        """The first places counted for ``reason``."""
        return list(self._examples.get(reason, ()))

    def merge(self, other: Problems) -> None:
        """Add another part's problems to these."""
        for reason, count in other._counts.items():
            self._counts[reason] = self._counts.get(reason, 0) + count
            kept = self._examples.setdefault(reason, [])
            kept.extend(other._examples.get(reason, [])[: EXAMPLES - len(kept)])

    def to_json(self) -> dict[str, Any]:
        """``{reason: {"count": n, "examples": [place, ...]}}``, places shown as text (``p2w.fspath.shown``)."""
        counted = sorted(self._counts.items())
        return {r: {"count": n, "examples": [shown(w) for w in self._examples.get(r, [])]} for r, n in counted}

    def __len__(self) -> int:
        return sum(self._counts.values())

    def __repr__(self) -> str:
        return f"Problems({self._counts})"
