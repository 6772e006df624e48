"""``p2w index``, ``p2w search`` and ``p2w status``: the photo catalog."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from p2w import fspath
from p2w.cli.root import (
    AfterOpt,
    AlphaOpt,
    BeforeOpt,
    CutoffOpt,
    DeviceOpt,
    DownloadOpt,
    ForceMapperOpt,
    IndexOpt,
    InOpt,
    KnnIndexOpt,
    KnnServiceOpt,
    MapperOpt,
    MinScoreOpt,
    ModelOpt,
    ModeOpt,
    PrecisionOpt,
    PretrainedOpt,
    QueryArgs,
    UnusedDeviceOpt,
    UnusedPrecisionOpt,
    WorkersOpt,
    app,
    err_console,
    load_engine,
    note,
    out_console,
    user_errors,
)
from p2w.errors import P2WError
from p2w.settings import Settings
from p2w.spec import BackboneSpec


@app.command("index", short_help="Add photos to a model's catalog: p2w index ~/Pictures")
def index_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="folders or files to index", show_default=False)] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: WorkersOpt = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="glob to skip (repeatable)")] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="also index hidden files/folders")] = False,
    show_skipped: Annotated[bool, typer.Option("--show-skipped", help="list the files that were skipped")] = False,
    no_videos: Annotated[bool, typer.Option("--no-videos", help="leave videos out (those indexed stay)")] = False,
    video_every: Annotated[
        float | None,
        typer.Option("--video-every", help="seconds between the frames taken of a video [default: 1, measured]"),
    ] = None,
    show_status: Annotated[bool, typer.Option("--status", help="show the catalogs (as p2w status) and exit")] = False,
    embeddings: Annotated[
        Path | None,
        typer.Option(
            "--embeddings",
            help="instead of photos: build DIR/image.index (FAISS) over a layout of p2w "
            "embed dataset or clip-retrieval",
        ),
    ] = None,
    max_memory: Annotated[
        str, typer.Option("--max-memory", help="with --embeddings: the index's size budget (e.g. 4G, 512M)")
    ] = "4G",
    index_key: Annotated[
        str | None,
        typer.Option("--index-key", help="with --embeddings: a FAISS factory string instead of p2w's choice"),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="with --embeddings: fill the index on Ray (local, auto or ray://HOST:PORT)"),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="then keep the catalog current as the folders change, until Ctrl-C")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the summary as JSON (with --watch: a line a batch)")
    ] = False,
) -> None:
    """Add photos to the catalog of a model, e.g. p2w index ~/Pictures; or build a FAISS index over a layout:
    p2w index --embeddings DIR"""
    if show_status:
        status_command(as_json=as_json, model=model, pretrained=pretrained)
        return
    if embeddings is not None:
        _index_embeddings(paths, embeddings, max_memory, index_key, ray, as_json)
        return
    with user_errors():
        from p2w.cli.render import LibraryProgress
        from p2w.cli.render_catalog import index_table, skipped_table
        from p2w.library.index import index

        if not paths:
            raise P2WError("give one or more folders to index, e.g. p2w index ~/Pictures")
        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        from p2w.core.video import Videos

        videos = None if no_videos else Videos() if video_every is None else Videos(video_every)
        options: dict[str, Any] = {"exclude": exclude or (), "include_hidden": include_hidden}
        options.update(batch_size=batch_size, videos=videos)
        if watch:
            _watch(paths, spec, lambda: load_engine(model, pretrained, device, precision), settings, as_json,
                   {**options, "workers": workers})  # fmt: skip
            return
        with LibraryProgress(err_console) as progress:
            report = index(
                paths,
                spec,
                lambda: load_engine(model, pretrained, device, precision),
                settings,
                workers=workers,
                progress=progress,
                **options,
            )
        if as_json:
            typer.echo(json.dumps(report.to_json()))
        else:
            out_console().print(index_table(report))
            if show_skipped and report.skipped:
                out_console().print(skipped_table(report.skipped))
        for folder, reason in report.unreadable:
            note(f"warning: {folder} {reason}; the photos catalogued under it are kept until it can be read")
        if report.interrupted:
            note("interrupted: what was embedded is kept; run the same command to continue")
            raise typer.Exit(130)


def _watch(
    paths: list[Path],
    spec: BackboneSpec,
    load: Callable[[], Any],
    settings: Settings,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    """``p2w index DIR --watch``: the first run as ``p2w index`` shows it, then a line (or a JSON line) a batch."""
    from p2w.cli.render_catalog import batch_line, index_table
    from p2w.library.watch import Batch, watch

    said: set[str] = set()  # roots said to be gone
    first = True

    def show(batch: Batch) -> None:
        nonlocal first
        for root in sorted(set(batch.gone) - said):
            note(f"warning: {root} is gone; its photos are kept (p2w forget {root} drops them)")
        said.update(batch.gone)
        if batch.report is None:
            if batch.problem:
                note(f"waiting: {batch.problem}")
        elif as_json:
            typer.echo(json.dumps({**batch.report.to_json(), "folders": [fspath.to_json(f) for f in batch.folders]}))
        elif first:
            out_console().print(index_table(batch.report))
            note(f"watching {', '.join(batch.folders)} (Ctrl-C stops)")
        elif line := batch_line(batch.report):
            note(line)
        first = first and batch.report is None

    try:
        watch(paths, spec, load, show, settings, **options)
    except KeyboardInterrupt:
        note("stopped watching; what was indexed is kept")


def _index_embeddings(
    paths: list[Path] | None, folder: Path, max_memory: str, key: str | None, ray: str | None, as_json: bool
) -> None:
    with user_errors():
        from p2w.cli.render import LibraryProgress
        from p2w.cli.render_datasets import index_build_table
        from p2w.datasets.faiss_index import build_index, parse_memory

        if paths:
            raise P2WError("give photos to index, or --embeddings DIR to build a layout's index, not both")
        with LibraryProgress(err_console) as progress:
            built = build_index(folder.expanduser(), parse_memory(max_memory), key, progress, ray=ray)
        summary = {"index": str(folder / "image.index"), **{k: v for k, v in vars(built).items() if k != "vectors"}}
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            out_console().print(index_build_table(summary))


@app.command("search", short_help="Search the catalog: p2w search shirt.jpg 'in red'")
def search_command(
    query: QueryArgs = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="number of results")] = 10,
    mode: ModeOpt = None,
    alpha: AlphaOpt = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="template with '*' and maybe {text}")] = None,
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    within: InOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    min_score: MinScoreOpt = None,
    cutoff_: CutoffOpt = False,
    ef: Annotated[
        int | None,
        typer.Option("--ef", min=1, help="search breadth: higher is slower, closer to exact [150 at 768-d, up to 400]"),
    ] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="JSON list of {rank, score, path}")] = False,
    paths_only: Annotated[bool, typer.Option("--paths", help="one path per line (for xargs)")] = False,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", help="also draw the query and its results into this PNG file")
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="show thumbnails in the terminal (kitty graphics protocol or sixel)")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --sheet file")] = False,
    no_server: Annotated[
        bool, typer.Option("--no-server", help="search in this process even when p2w serve runs for this model")
    ] = False,
    index: IndexOpt = None,
    knn_service: KnnServiceOpt = None,
    knn_index: KnnIndexOpt = None,
) -> None:
    """Search the catalog, e.g. p2w search shirt.jpg "with a red logo" --mapper NAME. A running p2w serve of the same
    model (and mapper) answers at once; --device or --precision search in this process."""
    with user_errors():
        from p2w.cli.output import check_output, split_query_args
        from p2w.core.cutoff import DROP, Cutoff
        from p2w.core.dates import Where
        from p2w.serve.query import Backend, GalleryChoice, Request, search

        check_output(sheet, overwrite=force, suffix=".png")
        imgs, txt = split_query_args(query or [])
        gallery = GalleryChoice(index, knn_service, knn_index)
        where = Where.parse(within, after, before)
        cutoff = Cutoff(min_score, DROP if cutoff_ else None)
        request = Request(tuple(imgs), txt, mode, prompt, k, where, ef, gallery, cutoff, alpha)
        backend = Backend(model, pretrained, mapper, device, precision, force_mapper, download, not no_server)
        answer = search(request, backend, notify=note)
        hits = answer.hits
        if not hits and (where or cutoff):
            note(f"no result: no photo {where.describe()} passes" if where else "no result passes the cutoff")
        if as_json:
            typer.echo(json.dumps([h.to_json() for h in hits]))
        elif paths_only:
            for h in hits:
                sys.stdout.buffer.write(fspath.raw(h.path) + b"\n")  # the exact name, for xargs
            sys.stdout.flush()
        else:
            from p2w.cli.render import NO_PREVIEW, hits_table
            from p2w.cli.render import preview as show

            console = out_console()
            console.print(hits_table(hits))
            if preview and not show(hits, console):
                note(NO_PREVIEW)
        if sheet is not None:
            from p2w.library.sheet import search_sheet

            words = f"{answer.plan.mode}: {txt}" if txt else answer.plan.mode
            drawn = search_sheet(hits, sheet, [Path(i) for i in imgs], words)
            note(f"contact sheet: {drawn}")


@app.command("forget", short_help="Drop the photos of a folder gone for good")
def forget_command(
    paths: Annotated[list[Path], typer.Argument(help="folders (or files) gone from disk", show_default=False)],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="also drop the photos of a folder that still exists")] = False,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """Drop the photos of a folder gone for good from the catalog of a model (p2w status lists such folders). No
    file on disk is touched."""
    with user_errors():
        from p2w.library.forget import forget

        settings = Settings.from_env()
        for path, count in forget(paths, settings.backbone(model, pretrained), settings, force=force).items():
            note(f"forgot {count} photos under {path}")


@app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="only the catalogs of this model (with --pretrained: this backbone)")
    ] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="with --model: only this backbone")] = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """Show the catalogs: backbone, photos, size on disk, location."""
    with user_errors():
        from p2w.cli.render_catalog import gone_lines, status_table
        from p2w.library.status import status

        settings = Settings.from_env()
        infos = status(settings, backbone=settings.backbone(model, pretrained) if model else None)
        if as_json:
            typer.echo(json.dumps([c.to_json() for c in infos]))
        elif not infos:
            note(f"no catalogs in {settings.home}; build one with: p2w index DIR")
        else:
            out_console().print(status_table(infos))
            for line in gone_lines(infos):
                err_console.print(line)
