"""``p2w duplicates``: groups of near-identical photos in a catalog (a report; nothing is moved or deleted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    InOpt,
    ModelOpt,
    PretrainedOpt,
    UnusedDeviceOpt,
    UnusedPrecisionOpt,
    app,
    err_console,
    note,
    out_console,
    user_errors,
)
from p2w.settings import Settings


@app.command("duplicates", short_help="Groups of near-identical photos in a catalog")
def duplicates_command(
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", min=-1.0, max=1.0, help="cosine at or above which two photos are near-identical"),
    ] = None,
    within: InOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='JSON list of {"photos": [{path, similarity, size}]}')
    ] = False,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """Groups of near-identical photos in the catalog of a model (re-encoded, resized, cropped or turned copies), the
    largest group first and in each the largest file first, from the vectors the catalog holds. Nothing is moved or
    deleted."""
    with user_errors():
        from p2w.cli.render import LibraryProgress
        from p2w.cli.render_catalog import duplicates_table
        from p2w.core.dates import Where
        from p2w.library.duplicates import THRESHOLD, duplicates
        from p2w.library.search import open_catalog

        settings = Settings.from_env()
        catalog = open_catalog(settings.backbone(model, pretrained), settings)
        try:
            with LibraryProgress(err_console) as progress:
                where = Where.parse(within) if within is not None else None
                groups = duplicates(catalog, THRESHOLD if threshold is None else threshold, where, progress=progress)
        finally:
            catalog.close()
        if as_json:
            typer.echo(json.dumps([g.to_json() for g in groups]))
        elif not groups:
            note("no near-identical photos" + (f" under {Path(within)}" if within else ""))
        else:
            out_console().print(duplicates_table(groups))
            note(f"{len(groups)} groups, {sum(len(g.photos) for g in groups)} photos; nothing was moved or deleted")
