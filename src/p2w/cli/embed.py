"""``p2w embed image`` and ``p2w embed query``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from p2w.cli.root import (
    AlphaOpt,
    DeviceOpt,
    DownloadOpt,
    ForceMapperOpt,
    ForceOpt,
    JsonOpt,
    MapperOpt,
    ModelOpt,
    ModeOpt,
    OutOpt,
    PrecisionOpt,
    PretrainedOpt,
    QueryArgs,
    RawOpt,
    embed_app,
    err_console,
    load_engine,
    note,
    out_console,
    user_errors,
)
from p2w.core.devices import workers_help
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
    mode: ModeOpt = None,
    alpha: AlphaOpt = None,
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
        qp, choice = plan_query(mode, len(imgs), bool(txt), prompt, mapper, backbone, settings, download, note, alpha)
        chosen = choice.path if choice is not None else None
        engine = load_engine(model, pretrained, device, precision, mapper=chosen, force_mapper=force_mapper)
        vectors = engine.encode_queries([imgs], [txt], qp.mode, qp.template, normalize=not raw, alpha=qp.alpha)
        image = imgs[0] if len(imgs) == 1 else (imgs or None)  # one path as before; a list for several
        record: dict[str, object] = {"input": {"image": image, "text": txt}, "mode": qp.mode, "prompt": qp.template}
        if qp.alpha is not None:
            record["alpha"] = qp.alpha
        _emit([record], vectors, output, as_json, force)


@embed_app.command("dataset", short_help="Embed a collection into clip-retrieval's layout")
def embed_dataset(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="folders, path lists (.txt .csv .tsv .parquet), webdataset shards (a.tar, {00000..00099}.tar)"
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="the layout's folder (new, or a run of the same sources to resume)")
    ],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float16 (clip-retrieval's) or float32")] = "float16",
    text: Annotated[bool, typer.Option("--text", help="also the captions' text embeddings (text_emb/)")] = False,
    part_rows: Annotated[int, typer.Option("--part-rows", min=1, help="rows per part of a folder or list")] = 10_000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help=f"{workers_help()}; with --ray: the tower's actors [default: 1]"),
    ] = None,
    path_column: Annotated[str | None, typer.Option("--path-column", help="a list's path column")] = None,
    caption_column: Annotated[str | None, typer.Option("--caption-column", help="a list's caption column")] = None,
    ray: Annotated[
        str | None, typer.Option("--ray", help="run on Ray: local (a private cluster), auto, or ray://HOST:PORT")
    ] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0, help="GPUs of each tower actor")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Embed an image collection into clip-retrieval's layout (img_emb/, metadata/, p2w.json), part by part; a re-run
    with the same sources resumes, e.g. p2w embed dataset 'shards/{00000..00019}.tar' --out emb/"""
    with user_errors():
        import json

        import p2w
        from p2w.cli.render import LibraryProgress
        from p2w.cli.render_datasets import dataset_table
        from p2w.datasets.embed import Options, embed_dataset

        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        options = Options(part_rows, dtype, text, batch_size, None if ray else workers, path_column, caption_column)

        def load() -> Any:
            return p2w.load(model, pretrained, mapper=None, device=device, precision=precision).backbone

        with LibraryProgress(err_console) as progress:
            report = embed_dataset(
                sources,
                out,
                spec,
                load,
                options,
                progress,
                ray,
                ray_workers=workers or 1,
                gpus_per_worker=gpus_per_worker,
            )
        if as_json:
            typer.echo(json.dumps(report.to_json()))
        else:
            out_console().print(dataset_table(report))
