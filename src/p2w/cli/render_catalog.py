"""Tables of the photo catalog's commands: ``p2w index`` (and its ``--watch`` lines), ``p2w status``,
``p2w duplicates``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from p2w.cli.render import human_size, plain
from p2w.fspath import shown

if TYPE_CHECKING:
    from p2w.library.duplicates import Group
    from p2w.library.index import IndexReport
    from p2w.library.status import CatalogInfo


def duplicates_table(groups: list[Group]) -> Table:
    """Groups of near-identical photos: group, similarity to the group's first photo, size, path."""
    table = Table()
    for name in ("group", "similarity", "size", "path"):
        table.add_column(name, justify="right" if name != "path" else "left", overflow="fold")
    for number, group in enumerate(groups, 1):
        for i, photo in enumerate(group.photos):
            similarity = "" if i == 0 else f"{photo.similarity:.3f}"
            last = i == len(group.photos) - 1
            table.add_row(str(number) if i == 0 else "", similarity, human_size(photo.size), plain(photo.path),
                          end_section=last)  # fmt: skip
    return table


def index_table(report: IndexReport) -> Table:
    """Summary of an index run."""
    title = f"{report.total} photos in the catalog of {report.backbone}" + (
        " (interrupted)" if report.interrupted else ""
    )
    table = Table(title=title)
    values = {
        "added": report.added,
        "updated": report.updated,
        "moved": report.moved,
        "removed": report.removed,
        "unchanged": report.unchanged,
        "skipped": len(report.skipped),
        **({"unreadable folders": len(report.unreadable)} if report.unreadable else {}),
        "seconds": f"{report.seconds:.1f}",
    }
    for column in values:
        table.add_column(column, justify="right")
    table.add_row(*(str(v) for v in values.values()))
    return table


def skipped_table(rows: list[tuple[str, str]], title: str = "skipped files") -> Table:
    """Paths an index run could not use (files, or folders it could not list), with the reason."""
    table = Table(title=title)
    table.add_column("path", overflow="fold")
    table.add_column("reason", overflow="fold")
    for path, reason in rows:
        table.add_row(plain(path), plain(reason))
    return table


def batch_line(report: IndexReport) -> str | None:
    """One line for a batch of ``p2w index --watch`` that changed something: ``12:03:04 1 added, 2 removed (31
    photos)``; None for one that did not."""
    import time

    counts = {"added": report.added, "updated": report.updated, "moved": report.moved, "removed": report.removed,
              "skipped": len(report.skipped)}  # fmt: skip
    said = [f"{n} {what}" for what, n in counts.items() if n]
    return f"{time.strftime('%H:%M:%S')} {', '.join(said)} ({report.total} photos)" if said else None


def status_table(infos: list[CatalogInfo]) -> Table:
    """One row per catalog."""
    table = Table(title="p2w catalogs")
    for column in ("backbone", "photos", "skipped", "size", "index", "location"):
        table.add_column(column, overflow="fold")
    for c in infos:
        table.add_row(
            plain(c.backbone),
            f"{c.files} ({c.videos} videos)" if c.videos else str(c.files),
            str(c.skipped),
            human_size(c.bytes_on_disk),
            "current" if c.ann_current else "rebuilt on next use",
            plain(c.folder),
        )
    return table


def gone_lines(infos: list[CatalogInfo]) -> list[Text]:
    """For each indexed folder gone from disk that the catalog still holds photos from: what, and the command that
    drops them."""
    from p2w.spec import options_for

    lines = []
    for c in infos:
        options = options_for(c.backbone)
        select = f" {options}" if options else (" --model ... --pretrained ..." if options is None else "")
        for path, photos in c.gone:
            lines.append(
                plain(
                    f"gone from disk: {path} ({photos} photos still in the catalog of {c.backbone}); if it will not "
                    f"come back: p2w forget {_quoted(path)}{select}"
                )
            )
    return lines


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(shown(path))
