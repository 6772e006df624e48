"""``p2w train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from p2w.cli.root import (
    DeviceOpt,
    ModelOpt,
    PretrainedOpt,
    WorkersOpt,
    app,
    err_console,
    note,
    out_console,
    user_errors,
)


@app.command("train", short_help="Train a mapper: p2w train --data imgs/ --name mine")
def train_command(
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="image folder (recursive), list (.txt, .csv, .tsv, .parquet; the reference CSV), or webdataset "
            "shards (shards/{00000..00099}.tar, a folder of them, a URL)",
        ),
    ] = None,
    path_column: Annotated[
        str | None,
        typer.Option(
            "--path-column",
            help="--data's list: the column of paths [default: image_path, path, "
            "filepath or filename, the first present]",
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option("--captions", help="caption file (a caption a line, JSONL or reference CSV): LinCIR's objective"),
    ] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option("--embeddings", help="a layout of p2w embed dataset: its vectors x norm instead of --data"),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="name to register the mapper under")] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16/fp16 autocast on CUDA), fp32, ...")
    ] = "auto",
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="[default: 10; with --captions: 4 over the captions, at least 1000 and at most 50000 steps]",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=2, help="per process [default: 128; with --captions 256]")
    ] = None,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="[default: 0.1; with --captions 0.01]")
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", help="steps [default: 10% of the run, <= 10000; with --captions <= 500]"),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule", help="after the warm-up: cosine or constant [default: cosine; with --captions constant]"
        ),
    ] = None,
    network: Annotated[
        str | None, typer.Option("--network", help="pic2word or phi [default: pic2word; with --captions phi]")
    ] = None,
    hidden_dim: Annotated[
        int | None, typer.Option("--hidden-dim", min=1, help="[default: 512; phi: 4 x embedding width]")
    ] = None,
    dropout: Annotated[
        float | None, typer.Option("--dropout", min=0.0, max=1.0, help="[default: 0.1; phi: 0.5]")
    ] = None,
    noise: Annotated[
        float, typer.Option("--noise", min=0.0, help="captions: t + NOISE * U(0,1) * N(0,I) goes to the mapper")
    ] = 1.0,
    mix: Annotated[
        str, typer.Option("--mix", help="--data with --captions: alternate (one objective a step) or sum")
    ] = "alternate",
    keywords: Annotated[
        str, typer.Option("--keywords", help="auto (spaCy when it loads, else p2w's stop-word rule) or rule")
    ] = "auto",
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.5)] = 0.02,
    augment_views: Annotated[int, typer.Option("--augment-views", min=0, help="cached random crops per image")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: WorkersOpt = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="encode images and caption features at every step (slow)")
    ] = False,
    no_graphs: Annotated[bool, typer.Option("--no-cuda-graphs", help="run the text tower eagerly on CUDA")] = False,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=0, help="stop after this many steps [default: --epochs decides]"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run of --name from its checkpoint")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace a mapper or run of the same name")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Train a mapper on unlabeled images and/or captions, e.g. p2w train --data imgs/ --name mine"""
    with user_errors():
        from p2w.cli.render import TrainProgress, train_table
        from p2w.training.config import TrainConfig
        from p2w.training.loop import train

        cfg = TrainConfig(
            data=data or "",
            path_column=path_column,
            captions=str(captions) if captions else None,
            embeddings=str(embeddings) if embeddings else None,
            name=name,
            model=model,
            pretrained=pretrained,
            device=device,
            precision=precision,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup=warmup,
            schedule=schedule,
            network=network,
            hidden_dim=hidden_dim,
            dropout=dropout,
            noise=noise,
            mix=mix,
            keywords=keywords,
            val_fraction=val_fraction,
            augment_views=augment_views,
            seed=seed,
            workers=workers,
            cache=not no_cache,
            cuda_graphs=not no_graphs,
            max_steps=max_steps,
            resume=resume,
            force=force,
        )
        with TrainProgress(err_console) as progress:
            result = train(cfg, callbacks=progress)
        if not result.main_process:
            return
        if as_json:
            typer.echo(json.dumps(result.to_json()))
        else:
            out_console().print(train_table(result))
        note(f"mapper {result.name!r} saved to {result.mapper_path}; use it with --mapper {result.name}")
