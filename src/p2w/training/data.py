"""Training images: every source ``p2w embed dataset`` reads (``p2w.core.sources``): a folder (walked as ``p2w index``
walks it), a list (a path a line, ``.csv``/``.tsv``/``.parquet`` with a path column: the reference's CC3M CSV
``filepath<TAB>title`` is one), webdataset shards (paths, brace patterns, a folder of shards, URLs through fsspec).
A list file of any other suffix is read as a path a line, as p2w always read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p2w.core.images import IMAGE_SUFFIXES
from p2w.core.sources import Part, Problems, plan
from p2w.errors import P2WError

Skipped = list[tuple[str, str]]


@dataclass(frozen=True)
class TrainingData:
    """What a ``--data`` source names: local files (sorted, each once) and shards (in order), and the rows planning
    found bad (a list's empty path cell, a folder that cannot be listed). Picklable: rank 0 plans, others take it."""

    files: list[Path]
    shards: list[Part]
    skipped: Skipped = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files) + len(self.shards)


def training_data(source: str, path_column: str | None = None) -> TrainingData:
    """The images ``source`` names; a missing or empty source is an error, e.g. ``training_data("cc3m.csv")``."""
    found = plan([source], rows_per_part=1 << 30, path_column=path_column, other_files_are_lists=True)
    files = sorted({Path(row.path) for part in found.parts if part.kind == "files" for row in part.rows})
    shards = [part for part in found.parts if part.kind == "tar"]
    if not files and not shards:
        raise P2WError(f"no images found in {source} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return TrainingData(files, shards, problem_rows(found.problems))


def problem_rows(problems: Problems) -> Skipped:
    """``(place, reason)`` per bad input counted: the places kept, then one row per further input of that reason
    (``Problems`` keeps a few places each), so that counting the rows counts the inputs."""
    rows: Skipped = []
    for reason, count in problems.counts().items():
        places = problems.examples(reason)
        rows += [(place, reason) for place in places]
        rows += [("(more)", reason)] * (count - len(places))
    return rows
