"""Rich rendering for the CLI: training progress on stderr and result tables."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from p2w.train import EpochSummary, TrainResult


class TrainProgress:
    """``p2w.train.Callbacks`` drawing a progress bar (features, then steps with loss, lr and samples/s)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> TrainProgress:
        self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.stop()

    def _task(self, key: str, description: str, total: int) -> TaskID:
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(description, total=total, info="")
        return self.tasks[key]

    def stage(self, text: str) -> None:
        """A line for each stage."""
        self.console.print(text)

    def features(self, done: int, total: int) -> None:
        """Progress of the one-off feature pass."""
        self.bar.update(self._task("features", "features", total), completed=done)

    def step(self, step: int, total: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Progress of the optimisation steps."""
        info = f"loss {loss:.4f}  lr {lr:.2e}  {samples_per_s:,.0f} samples/s"
        self.bar.update(self._task("train", "training", total), completed=step, info=info)

    def epoch(self, summary: EpochSummary) -> None:
        """One line per finished epoch."""
        val = (
            f"  val R@1 {summary.val_recall_at_1:.3f} R@5 {summary.val_recall_at_5:.3f}"
            if summary.val_recall_at_1 is not None
            else ""
        )
        self.console.print(
            f"epoch {summary.epoch}: loss {summary.loss:.4f}{val}  {summary.samples_per_s:,.0f} samples/s"
        )


def train_table(result: TrainResult) -> Table:
    """The per-epoch summary of a run."""
    table = Table(
        title=f"mapper {result.name} ({result.backbone}, {result.samples} images, {len(result.skipped)} skipped)"
    )
    for column in ("epoch", "loss", "val R@1", "val R@5", "samples/s"):
        table.add_column(column, justify="right")
    for e in result.epochs:
        r1 = "-" if e.val_recall_at_1 is None else f"{e.val_recall_at_1:.3f}"
        r5 = "-" if e.val_recall_at_5 is None else f"{e.val_recall_at_5:.3f}"
        table.add_row(str(e.epoch), f"{e.loss:.4f}", r1, r5, f"{e.samples_per_s:,.0f}")
    return table
