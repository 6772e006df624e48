"""``p2w demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    DeviceOpt,
    app,
    chosen_mapper,
    err_console,
    load_engine,
    out_console,
    user_errors,
)
from p2w.settings import Settings


@app.command("demo")
def demo_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the gallery and contact sheet [default: P2W_HOME/demo]"),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """See composed retrieval work, offline: the embedded micro model on a small gallery of coloured clothes."""
    with user_errors():
        from p2w.cli.render import LibraryProgress, demo_table
        from p2w.micro import demo
        from p2w.spec import BUILTIN_TAG

        settings = Settings.from_env()
        folder = out or settings.home / "demo"
        err_console.print(
            f"p2w demo: the embedded model {demo.MODEL} (a micro CLIP trained by p2w on Fashion-MNIST items in "
            "eight colours) and its Pic2Word mapper; nothing is downloaded"
        )
        mapper = chosen_mapper(None, demo.MODEL, BUILTIN_TAG, download=False)  # the shipped one
        with LibraryProgress(err_console) as progress:
            result = demo.run(
                folder, lambda: load_engine(demo.MODEL, BUILTIN_TAG, device, "auto", mapper=mapper), settings, progress
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
