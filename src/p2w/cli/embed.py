"""``p2w embed image`` and ``p2w embed query``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from p2w.cli.root import (
    DeviceOpt,
    DownloadOpt,
    ForceMapperOpt,
    ForceOpt,
    JsonOpt,
    MapperOpt,
    ModelOpt,
    OutOpt,
    PrecisionOpt,
    PretrainedOpt,
    QueryArgs,
    RawOpt,
    embed_app,
    load_engine,
    note,
    user_errors,
)
from p2w.settings import Settings


def _emit(records: list[dict[str, Any]], vectors: Any, output: Path | None, as_json: bool, force: bool) -> None:
    from p2w.cli.output import save_npy, vectors_json

    if output is not None:
        save_npy(vectors, output, overwrite=force)
        note(f"wrote {len(vectors)} vector(s) of width {vectors.shape[1]} to {output}")
    if as_json or output is None:
        typer.echo(vectors_json(records, vectors))


@embed_app.command("image", short_help="Embed images: p2w embed image a.jpg b.png")
def embed_image(
    paths: Annotated[list[Path], typer.Argument(help="image files")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    raw: RawOpt = False,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Embed images, e.g. p2w embed image a.jpg b.png"""
    with user_errors():
        from p2w.cli.output import check_output

        check_output(output, overwrite=force)
        engine = load_engine(model, pretrained, device, precision)
        vectors = engine.encode_images([str(p) for p in paths], batch_size=batch_size, normalize=not raw)
        _emit([{"input": str(p)} for p in paths], vectors, output, as_json, force)


@embed_app.command("query", short_help="Embed a query: p2w embed query shirt.jpg 'in red'")
def embed_query(
    query: QueryArgs = None,
    mode: Annotated[str | None, typer.Option("--mode", help="pic2word, image, text or average")] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="template with '*' and optionally {text}; default 'a photo of * , {text}'"),
    ] = None,
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    raw: RawOpt = False,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Embed a query, e.g. p2w embed query shirt.jpg "with a red logo" --mapper NAME"""
    with user_errors():
        from p2w.cli.output import check_output, split_query_args
        from p2w.mappers.choice import plan_query

        check_output(output, overwrite=force)
        imgs, txt = split_query_args(query or [])
        settings = Settings.from_env()
        backbone = settings.backbone(model, pretrained).id
        qp, choice = plan_query(mode, len(imgs), bool(txt), prompt, mapper, backbone, settings, download, note)
        chosen = choice.path if choice is not None else None
        engine = load_engine(model, pretrained, device, precision, mapper=chosen, force_mapper=force_mapper)
        vectors = engine.encode_queries([imgs], [txt], mode=qp.mode, prompt=qp.template, normalize=not raw)
        image = imgs[0] if len(imgs) == 1 else (imgs or None)  # one path as before; a list for several
        record = {"input": {"image": image, "text": txt}, "mode": qp.mode, "prompt": qp.template}
        _emit([record], vectors, output, as_json, force)
