"""Rich rendering for the CLI: training progress on stderr and result tables."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from p2w.fspath import shown

if TYPE_CHECKING:
    from p2w.evaluation.common import EvalResult
    from p2w.library.catalog import Hit
    from p2w.mappers.registry import Registered
    from p2w.micro.demo import DemoQuery
    from p2w.micro.demo import Result as DemoResult
    from p2w.training.config import EpochSummary, TrainResult


class TrainProgress:
    """``p2w.train.Callbacks`` drawing progress bars (image features, keywords and caption features, then steps
    with loss, lr and samples/s)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,  # a log or a pipe gets no bars (and no stray blank line)
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

    def progress(self, stage: str, done: int, total: int) -> None:
        """Progress of the one-off passes, a bar per stage ("features", "keywords", "caption features")."""
        self.bar.update(self._task(stage, stage, total), completed=done)

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


class LibraryProgress:
    """``p2w.library`` progress callback: a bar per stage (hashing, embedding) on stderr."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,  # a log or a pipe gets no bars (and no stray blank line)
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> LibraryProgress:
        return self  # the bar starts with the first report: a run with nothing to do prints nothing

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.tasks:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        import time

        if not self.tasks:
            self.bar.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, rate="")
            self.started[stage] = time.perf_counter()
        rate = done / max(time.perf_counter() - self.started[stage], 1e-9)
        unit = "files" if stage in ("hashing", "embedding") else stage
        self.bar.update(self.tasks[stage], completed=done, rate=f"{rate:,.1f} {unit}/s")


def train_table(result: TrainResult) -> Table:
    """The per-epoch summary of a run; its title counts what it trained on (images, captions or both)."""
    if result.captions:
        what = f"{result.images} images, {result.captions} captions" if result.images else f"{result.captions} captions"
    else:
        what = f"{result.samples} images"
    table = Table(title=f"mapper {result.name} ({result.backbone}, {what}, {len(result.skipped)} skipped)")
    for column in ("epoch", "loss", "val R@1", "val R@5", "samples/s"):
        table.add_column(column, justify="right")
    for e in result.epochs:
        r1 = "-" if e.val_recall_at_1 is None else f"{e.val_recall_at_1:.3f}"
        r5 = "-" if e.val_recall_at_5 is None else f"{e.val_recall_at_5:.3f}"
        table.add_row(str(e.epoch), f"{e.loss:.4f}", r1, r5, f"{e.samples_per_s:,.0f}")
    return table


def plain(value: object) -> Text:
    """Data for a table cell or a line: printed as it is (a ``[draft]`` in a file name is not markup), a path's bytes
    that are not UTF-8 as ``\\xNN`` (``p2w.fspath.shown``)."""
    return Text(shown(str(value)))


def hits_table(hits: list[Hit]) -> Table:
    """Search results: rank, score, path, size, when it was taken ("(file)": the file's time, no EXIF date); where the
    hits are no catalogued files (an index over a layout, a clip-retrieval back end: no size, no date), rank, score,
    path (a file, a key or a URL) and caption."""
    files = not hits or any(h.size or h.mtime for h in hits)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    for column in ("size", "taken") if files else ("caption",):
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
    for h in hits:
        if files:
            table.add_row(str(h.rank), f"{h.score:.3f}", plain(_where(h)), human_size(h.size), _taken(h))
        else:
            table.add_row(str(h.rank), f"{h.score:.3f}", plain(h.path), plain(h.caption or ""))
    return table


def _where(hit: Hit) -> str:
    """The path, and for a video the times of its frames among the results: ``clip.mp4 @ 01:23, 02:10``."""
    if not hit.times:
        return hit.path
    return f"{hit.path} @ " + ", ".join(clock(t) for t in hit.times)


def clock(seconds: float) -> str:
    """``83.4`` -> ``01:23``; an hour or more: ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _taken(hit: Hit) -> str:
    """``2023-07-14 10:30`` (the EXIF date), ``... (file)`` (the file's time)."""
    if hit.taken is None:  # a server of an older p2w
        from datetime import datetime

        return datetime.fromtimestamp(hit.mtime).strftime("%Y-%m-%d %H:%M") + " (file)"
    return hit.taken[:16].replace("T", " ") + (" (file)" if hit.taken_from == "mtime" else "")


NO_PREVIEW = (
    "--preview: this terminal shows no inline images (that needs the kitty graphics protocol or sixel: kitty, "
    "WezTerm, iTerm2, foot, ...); try --sheet FILE.png"
)


def preview(hits: list[Hit], console: Console, width: int = 24) -> bool:
    """Thumbnails of ``hits`` inline, each with its rank, score and path, where the terminal shows images (kitty's
    graphics protocol or sixel, detected by textual-image); False (nothing printed) where it does not."""
    from p2w.errors import P2WError

    try:
        from textual_image import renderable
    except ImportError as exc:
        raise P2WError("--preview needs textual-image: pip install 'p2w[preview]'") from exc
    if renderable.Image not in (renderable.SixelImage, renderable.TGPImage):
        return False
    for h in hits:
        console.print(renderable.Image(h.path, width=width))
        console.print(plain(f"{h.rank}. {h.score:.3f}  {h.path}"), soft_wrap=True)
    return True


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class DownloadProgress:
    """Byte progress of a mapper download on stderr (drawn only once bytes arrive)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import DownloadColumn, TransferSpeedColumn

        self.bar = Progress(
            TextColumn("downloading"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,  # a log or a pipe gets no bars (and no stray blank line)
            transient=True,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.task is not None:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("download", total=total or None)
        self.bar.update(self.task, completed=done)


def mappers_table(rows: list[Registered]) -> Table:
    """The registered mappers."""
    table = Table(title="p2w mappers")
    for column in ("name", "method", "backbone", "dims", "size", "source", "default"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            plain(r.name),
            r.method,
            plain(r.backbone),
            f"{r.embed_dim} -> {r.token_width}",
            human_size(r.size),
            plain(r.source),
            "*" if r.is_default else "",
        )
    return table


def eval_table(results: list[EvalResult]) -> Table:
    """One table for a benchmark run in one or more modes, a row per mode (metrics in percent), so modes compare.

    Groups (FashionIQ's categories, micro-fashion's tasks) become columns ``group metric`` when their metrics differ,
    and a ``group`` column (one row per mode and group) when every group has the same metrics.
    """
    first = results[0]
    mappers = sorted({r.mapper for r in results if r.mapper})
    title = f"{first.benchmark} {first.split}, {first.backbone}" + (f", mapper {', '.join(mappers)}" if mappers else "")
    missing = {k: v for k, v in first.missing.items() if v}
    table = Table(title=title, caption=f"missing: {missing}" if missing else None)
    table.add_column("mode")
    grouped = [_groups(r.metrics) for r in results]
    names = list(dict.fromkeys(g for groups in grouped for g in groups))
    keys = {g: list(dict.fromkeys(k for groups in grouped for k in groups.get(g, {}))) for g in names}
    same = len(names) > 1 and all(keys[g] == keys[names[0]] for g in names)
    if same:
        table.add_column("group")
        for k in keys[names[0]]:
            table.add_column(k, justify="right")
        for r, groups in zip(results, grouped, strict=True):
            for g in names:
                table.add_row(r.label, g, *(_pct(groups.get(g, {}), k) for k in keys[g]))
        return table
    columns = [(g, k) for g in names for k in keys[g]]
    for g, k in columns:
        table.add_column(f"{g} {k}".strip(), justify="right")
    for r, groups in zip(results, grouped, strict=True):
        table.add_row(r.label, *(_pct(groups.get(g, {}), k) for g, k in columns))
    return table


def _groups(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return metrics if all(isinstance(v, dict) for v in metrics.values()) else {"": metrics}


def _pct(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.2f}" if key in values else ""


def demo_table(query: DemoQuery, results: list[DemoResult]) -> Table:
    """One demo query: per mode, its top results (class and colour) with right answers ticked, and what a tick
    means for this query (a colour change asks for the very same item, not any item of that class and colour)."""
    from p2w.micro.demo import parse_name
    from p2w.micro.world import CLASSES, COLOUR_NAMES

    table = Table(title=Text(f"query: {query.describe()}"), title_justify="left")
    table.add_column("mode")
    table.add_column("right", justify="right")
    table.add_column(f"top results (✓ = {query.wanted()})", overflow="fold")
    for r in results:
        cell = Text()
        for i, (path, right) in enumerate(zip(r.paths, r.right, strict=True)):
            label, colour, _ = parse_name(path)
            cell.append(", " if i else "")
            cell.append("✓" if right else "·", style="green" if right else "dim")
            cell.append(f" {COLOUR_NAMES[colour]} {CLASSES[label]}")
        table.add_row(
            Text(r.mode, style="bold" if r.mode == "pic2word" else ""), f"{sum(r.right)}/{len(r.right)}", cell
        )
    return table
