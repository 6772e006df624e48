"""``p2w eval BENCHMARK``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    AlphaOpt,
    DeviceOpt,
    DownloadOpt,
    ForceMapperOpt,
    MapperOpt,
    ModelOpt,
    PrecisionOpt,
    PretrainedOpt,
    WorkersOpt,
    app,
    load_engine,
    out_console,
    user_errors,
)
from p2w.core.compose import MAPPED
from p2w.settings import Settings


@app.command("eval", short_help="Benchmark numbers: p2w eval fashioniq --data DIR")
def eval_command(
    benchmark: Annotated[str, typer.Argument(help="fashioniq, cirr, imagenet-r, circo, coco or micro-fashion")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="the benchmark's folder, in its published layout (micro-fashion: Fashion-MNIST)"),
    ] = None,
    mode: Annotated[
        str,
        typer.Option("--mode", help="pic2word, slerp, weighted, pic2word-slerp, average, image, text or all"),
    ] = "pic2word",
    alpha: AlphaOpt = None,
    alpha_sweep: Annotated[
        bool, typer.Option("--alpha-sweep", help="each weighed mode at every alpha 0, 0.05, ..., 1 (a row each)")
    ] = False,
    split: Annotated[str | None, typer.Option("--split", help="val (or test1 for CIRR) [default: val]")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="FashionIQ category (repeatable)")] = None,
    caption_order: Annotated[
        str | None,
        typer.Option("--caption-order", help="FashionIQ: pic2word (cap2 and cap1; the default) or both (averaged)"),
    ] = None,
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: WorkersOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="missing images or queries are an error")] = False,
    save_predictions: Annotated[
        Path | None, typer.Option("--save-predictions", help="write the top-50 gallery names of every query (JSON)")
    ] = None,
    submission: Annotated[
        Path | None, typer.Option("--submission", help="CIRR test1 / CIRCO test: folder for the server files")
    ] = None,
    gallery: Annotated[Path | None, typer.Option("--gallery", help="CIRCO: the COCO 2017 unlabeled images")] = None,
    query_style: Annotated[
        str | None,
        typer.Option("--query-style", help="CIRCO: caption (relative caption; the default) or concept (concept first)"),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="FashionIQ, CIRR, CIRCO: the pic2word template [default: the mapper's method's]"),
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(
            "--preprocess",
            help="FashionIQ, CIRR, CIRCO: clip (the backbone's own; the default) or targetpad (SEARLE's padding)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Benchmark numbers in the papers' protocols, e.g. p2w eval fashioniq --data fashion-iq/"""
    with user_errors():
        from p2w.evaluation.registry import benchmark as lookup

        bench = lookup(benchmark)
        options = bench.own_options(
            categories=category,
            caption_order=caption_order,
            submission=submission,
            gallery=gallery,
            query_style=query_style,
            prompt=prompt,
            preprocess=preprocess,
        )
        folder = bench.folder(data)  # before a mapper is looked for or the model loaded
        model = model or bench.model
        engine = load_engine(
            model,
            pretrained,
            device,
            precision,
            mapper=mapper or "default",
            force_mapper=force_mapper,
            download=download,
            need_mapper=mode in (*MAPPED, "all"),  # the other modes need none
        )
        results = bench.evaluate(
            engine,
            folder,
            Settings.from_env().home,
            mode=mode,
            alpha=alpha,
            alpha_sweep=alpha_sweep,
            split=split,
            strict=strict,
            workers=workers,
            batch_size=batch_size,
            **options,
        )
        if save_predictions is not None:
            from p2w.cli.output import write_json

            preds = results[0].predictions if len(results) == 1 else {r.label: r.predictions for r in results}
            write_json(save_predictions, preds)
        if as_json:
            payload = results[0].to_json() if len(results) == 1 else [r.to_json() for r in results]
            typer.echo(json.dumps(payload))
        else:
            from p2w.cli.render import eval_table

            out_console().print(eval_table(results))
