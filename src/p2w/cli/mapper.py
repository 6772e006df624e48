"""``p2w mapper import|download|list|remove|default``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    ModelOpt,
    PretrainedOpt,
    UnusedDeviceOpt,
    UnusedModelOpt,
    UnusedPrecisionOpt,
    UnusedPretrainedOpt,
    err_console,
    mapper_app,
    note,
    out_console,
    user_errors,
)
from p2w.settings import Settings

MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="pic2word, searle or lincir: whose mapper it is [default: what the file or the known entry says]",
    ),
]


@mapper_app.command("import", short_help="Import a mapper file for a backbone")
def mapper_import(
    file: Annotated[Path, typer.Argument(help="reference checkpoint (.pt), p2w or plain safetensors file")],
    name: Annotated[str, typer.Option("--name", help="name to register it under")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="replace a mapper of the same name")] = False,
    method: MethodOpt = None,
) -> None:
    """Import a mapper (e.g. a checkpoint of the reference training code) for the given backbone."""
    with user_errors():
        from p2w.core.resolve import mapper_dims
        from p2w.mappers.files import import_mapper

        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        target = import_mapper(
            file, name, settings.mappers_dir, spec.id, mapper_dims(spec), overwrite=force, method_name=method
        )
        note(f"imported {file} as mapper {name!r} for {spec.id}: {target}")
        typer.echo(str(target))


@mapper_app.command("download", short_help="Download a published mapper and register it")
def mapper_download(
    source: Annotated[str, typer.Argument(help="known name (pic2word-vit-l-14), hf://owner/repo/file, URL or file")],
    name: Annotated[str | None, typer.Option("--name", help="name to register it under")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="expected SHA-256 of the downloaded file")] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
    keep_source: Annotated[bool, typer.Option("--keep-source", help="keep the downloaded checkpoint")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace a mapper of the same name")] = False,
    method: MethodOpt = None,
) -> None:
    """Download a published mapper and register it, e.g. p2w mapper download pic2word-vit-l-14"""
    with user_errors():
        from p2w.cli.render import DownloadProgress
        from p2w.mappers.download import download

        with DownloadProgress(err_console) as progress:
            got = download(
                source,
                name=name,
                sha256=sha256,
                model=model,
                pretrained=pretrained,
                keep_source=keep_source,
                overwrite=force,
                progress=progress,
                method_name=method,
            )
        note(f"registered mapper {got.name!r} for {got.backbone} (source sha256 {got.sha256})")
        if got.source_kept:
            note(f"the source checkpoint stays at {got.source_kept}")
        typer.echo(str(got.path))


@mapper_app.command("list", short_help="List the registered mappers")
def mapper_list(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    model: Annotated[str | None, typer.Option("--model", help="only the mappers of this model's backbone")] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="with --model: that backbone's")] = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """List the registered mappers (name, backbone, dims, size, source, default)."""
    with user_errors():
        from p2w.cli.render import mappers_table
        from p2w.mappers.registry import registered

        settings = Settings.from_env()
        rows = registered(settings)
        if model:
            backbone = settings.backbone(model, pretrained).id
            rows = [r for r in rows if r.backbone == backbone]
        if as_json:
            typer.echo(json.dumps([r.to_json() for r in rows]))
        elif not rows:
            note("no mappers yet: p2w mapper download pic2word-vit-l-14, p2w mapper import, or p2w train")
        else:
            out_console().print(mappers_table(rows))


@mapper_app.command("remove")
def mapper_remove(
    name: Annotated[str, typer.Argument(help="registered mapper name")],
    model: UnusedModelOpt = None,
    pretrained: UnusedPretrainedOpt = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """Delete a registered mapper."""
    with user_errors():
        from p2w.mappers.registry import remove

        note(f"removed {remove(name)}")


@mapper_app.command("default", short_help="Make a mapper the default of its backbone")
def mapper_default(
    name: Annotated[str, typer.Argument(help="registered mapper name")],
    model: UnusedModelOpt = None,
    pretrained: UnusedPretrainedOpt = None,
    device: UnusedDeviceOpt = None,
    precision: UnusedPrecisionOpt = "auto",
) -> None:
    """Make a mapper the default of its backbone (used when --mapper is not given)."""
    with user_errors():
        from p2w.mappers.registry import set_default

        note(f"{name!r} is now the default mapper of {set_default(name)}")
