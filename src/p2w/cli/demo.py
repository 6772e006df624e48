"""``p2w demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    DeviceOpt,
    PrecisionOpt,
    app,
    err_console,
    load_engine,
    note,
    out_console,
    user_errors,
)
from p2w.settings import Settings


@app.command("demo", short_help="See composed retrieval work, offline, on the embedded micro model")
def demo_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the gallery and contact sheet [default: P2W_HOME/demo]"),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="accepted for uniformity; the demo always runs p2w-micro-fashion")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="accepted for uniformity; the demo uses the builtin weights")
    ] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
) -> None:
    """See composed retrieval work, offline: the embedded micro model on a small gallery of coloured clothes."""
    with user_errors():
        from p2w.cli.render import LibraryProgress, demo_table
        from p2w.micro import demo
        from p2w.spec import BUILTIN_TAG

        if (model and model != demo.MODEL) or (pretrained and pretrained != BUILTIN_TAG):
            note(f"note: p2w demo runs the embedded {demo.MODEL}; --model/--pretrained are not used")
        settings = Settings.from_env()
        folder = out or settings.home / "demo"
        note(
            f"p2w demo: the embedded model {demo.MODEL} (a micro CLIP trained by p2w on Fashion-MNIST items in "
            "eight colours) and its Pic2Word mapper; nothing is downloaded"
        )
        with LibraryProgress(err_console) as progress:
            result = demo.run(
                folder,
                lambda: load_engine(demo.MODEL, BUILTIN_TAG, device, precision, mapper="default", need_mapper=True),
                settings,
                progress,
            )
        console = out_console()
        for query, results in zip(demo.QUERIES, result.results, strict=True):
            console.print(demo_table(query, results))
        r = result.indexed
        console.print(f"gallery: {result.images} images in {result.gallery} ({r.added} newly indexed)")
        console.print(f"contact sheet: {result.sheet}")
        console.print(
            "search it yourself: p2w search --model p2w-micro-fashion IMAGE 'shirt' --prompt 'a * {text}'\n"
            "your own photos (the published Pic2Word mapper, ~1.7 GB, needs the network once):\n"
            "  p2w mapper download pic2word-vit-l-14 && p2w index ~/Pictures && "
            "p2w search shirt.jpg 'with a red logo'"
        )
