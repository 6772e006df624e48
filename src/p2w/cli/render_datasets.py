"""Tables of the scale commands: ``p2w embed dataset``'s summary and ``p2w index --embeddings``'s build."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from p2w.datasets.embed import EmbedReport


def dataset_table(report: EmbedReport) -> Table:
    """Summary of ``p2w embed dataset``: parts and rows written, what was skipped and why."""
    summary = report.to_json()
    table = Table(title=Text(f"{report.rows} rows of {report.backbone} into {report.out}"))
    for column in ("parts", "written now", "done before", "rows", "rows/s", "seconds"):
        table.add_column(column, justify="right")
    rate = summary["rows_per_s"]
    table.add_row(
        str(report.parts), str(report.written), str(report.resumed), str(report.rows),
        "-" if rate is None else f"{rate:,.1f}", f"{report.seconds:.1f}",
    )  # fmt: skip
    for reason, count in report.problems.counts().items():
        table.caption = (table.caption or "skipped: ") + f"{reason} {count}; "
    return table


def index_build_table(summary: dict[str, Any]) -> Table:
    """What ``p2w index --embeddings`` built: the file, its type, rows, search breadth, recall, time."""
    table = Table(title=f"index {summary['index']}")
    for column in ("rows", "key", "search", "recall@10", "size", "seconds"):
        table.add_column(column, justify="right" if column in ("rows", "size", "seconds") else "left")
    recall = summary["recall_at_10"]
    table.add_row(
        f"{summary['rows']:,}",
        Text(summary["key"]),
        Text(summary["params"] or "exact"),
        "-" if recall is None else f"{recall:.3f}",
        f"{summary['size'] / 2**20:,.1f} MiB",
        f"{summary['seconds']:.1f}",
    )
    return table
