"""The ``p2w`` command line: each command parses, calls the library, and renders. No logic lives here."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from p2w.errors import P2WError
from p2w.settings import Settings

app = typer.Typer(
    name="p2w",
    help="Composed image retrieval with Pic2Word: find a photo from another photo plus words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
embed_app = typer.Typer(help="Print embeddings of images or composed queries.", no_args_is_help=True)
mapper_app = typer.Typer(help="Manage Pic2Word mappers.", no_args_is_help=True)
app.add_typer(embed_app, name="embed")
app.add_typer(mapper_app, name="mapper")

err_console = Console(stderr=True, highlight=False)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="open_clip model name or model-config JSON [env P2W_MODEL; default ViT-L-14]"),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option("--pretrained", help="open_clip tag, weights file, or 'none' [env P2W_PRETRAINED; default openai]"),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps [env P2W_DEVICE]")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, else fp32), fp32, fp16, bf16")]
RawOpt = Annotated[bool, typer.Option("--raw", help="unnormalised vectors instead of unit-length ones")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout (the default without -o)")]
OutOpt = Annotated[Path | None, typer.Option("-o", "--output", help="write a float32 .npy file instead")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite an existing output file")]
MapperOpt = Annotated[str | None, typer.Option("--mapper", help="mapper name or file [default: the model's default]")]
ForceMapperOpt = Annotated[bool, typer.Option("--force-mapper", help="use a mapper made for another model")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="fetch the known mapper if none is set up")]


def _version(value: bool) -> None:
    if value:
        from p2w import __version__

        typer.echo(f"p2w {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show progress of third-party libraries")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    _configure_logging(verbose)


class _OwnRecords(logging.Filter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.startswith("p2w")


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_OwnRecords(verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("p2w").setLevel(logging.INFO)
    if not verbose:
        warnings.filterwarnings("ignore")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the library's typed errors into one ``error: ...`` line on stderr and exit status 1."""
    try:
        yield
    except P2WError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def _emit(records: list[dict[str, Any]], vectors: Any, output: Path | None, as_json: bool, force: bool) -> None:
    from p2w.output import save_npy, vectors_json

    if output is not None:
        save_npy(vectors, output, overwrite=force)
        err_console.print(f"wrote {len(vectors)} vector(s) of width {vectors.shape[1]} to {output}")
    if as_json or output is None:
        typer.echo(vectors_json(records, vectors))


def _load(model: str | None, pretrained: str | None, device: str | None, precision: str, **kw: Any) -> Any:
    import p2w

    return p2w.load(model=model, pretrained=pretrained, device=device, precision=precision, **kw)


@embed_app.command("image")
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
    with _user_errors():
        from p2w.output import check_output

        check_output(output, overwrite=force)
        engine = _load(model, pretrained, device, precision)
        vectors = engine.encode_images([str(p) for p in paths], batch_size=batch_size, normalize=not raw)
        _emit([{"input": str(p)} for p in paths], vectors, output, as_json, force)


@embed_app.command("query")
def embed_query(
    image: Annotated[str | None, typer.Argument(help="query image (optional)", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(help="query text, e.g. 'with a red logo'", show_default=False)] = None,
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
    with _user_errors():
        from p2w.compose import plan
        from p2w.output import check_output, split_query_args

        check_output(output, overwrite=force)
        img, txt = split_query_args(image, text)
        qp = plan(mode, img is not None, bool(txt), prompt)
        if qp.needs_mapper:  # resolved before the model loads
            mapper = _mapper_or_default(mapper, model, pretrained, download)
        engine = _load(model, pretrained, device, precision, mapper=mapper, force_mapper=force_mapper)
        vectors = engine.encode_queries([img], [txt], mode=qp.mode, prompt=qp.template, normalize=not raw)
        record = {"input": {"image": img, "text": txt}, "mode": qp.mode, "prompt": qp.template}
        _emit([record], vectors, output, as_json, force)


@mapper_app.command("import")
def mapper_import(
    file: Annotated[Path, typer.Argument(help="reference checkpoint (.pt), p2w or plain safetensors file")],
    name: Annotated[str, typer.Option("--name", help="name to register it under")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace a mapper of the same name")] = False,
) -> None:
    """Import a mapper (e.g. a checkpoint of the reference training code) for the given backbone."""
    with _user_errors():
        from p2w.mapper import import_mapper
        from p2w.weights import mapper_dims

        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        target = import_mapper(file, name, settings.mappers_dir, spec.id, mapper_dims(spec), overwrite=force)
        err_console.print(f"imported {file} as mapper {name!r} for {spec.id}: {target}")
        typer.echo(str(target))


@app.command("index")
def index_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="folders or files to index", show_default=False)] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 4,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="glob to skip (repeatable)")] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="also index hidden files/folders")] = False,
    show_skipped: Annotated[bool, typer.Option("--show-skipped", help="list the files that were skipped")] = False,
    show_status: Annotated[bool, typer.Option("--status", help="show the catalogs (as p2w status) and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Add photos to the catalog of a model, e.g. p2w index ~/Pictures"""
    if show_status:
        status_command(as_json=as_json)
        return
    with _user_errors():
        from p2w.library import index
        from p2w.render import LibraryProgress, index_table, skipped_table

        if not paths:
            raise P2WError("give one or more folders to index, e.g. p2w index ~/Pictures")
        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        with LibraryProgress(err_console) as progress:
            report = index(
                paths,
                spec,
                lambda: _load(model, pretrained, device, precision),
                settings,
                exclude=exclude or (),
                include_hidden=include_hidden,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
            )
        if as_json:
            typer.echo(json.dumps(report.to_json()))
        else:
            Console().print(index_table(report))
            if show_skipped and report.skipped:
                Console().print(skipped_table(report))
        if report.interrupted:
            err_console.print("interrupted: what was embedded is kept; run the same command to continue")
            raise typer.Exit(130)


@app.command("search")
def search_command(
    image: Annotated[str | None, typer.Argument(help="query image (optional)", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(help="query text, e.g. 'with a red logo'", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="number of results")] = 10,
    mode: Annotated[str | None, typer.Option("--mode", help="pic2word, image, text or average")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="template with '*' and maybe {text}")] = None,
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    within: Annotated[Path | None, typer.Option("--in", help="only photos under this folder")] = None,
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
) -> None:
    """Search the catalog, e.g. p2w search shirt.jpg "with a red logo" --mapper NAME"""
    with _user_errors():
        from p2w.compose import plan
        from p2w.library import open_catalog, search
        from p2w.output import split_query_args

        img, txt = split_query_args(image, text)
        qp = plan(mode, img is not None, bool(txt), prompt)
        if qp.needs_mapper:
            mapper = _mapper_or_default(mapper, model, pretrained, download)
        settings = Settings.from_env()
        spec = settings.backbone(model, pretrained)
        catalog = open_catalog(spec, settings)  # before the model: a missing catalog fails fast
        try:
            engine = _load(model, pretrained, device, precision, mapper=mapper, force_mapper=force_mapper)
            query = engine.encode_query(_query_image(engine, img), txt, mode=qp.mode, prompt=qp.template)
            hits = search(catalog, query, k=k, within=within, ef=ef)
        finally:
            catalog.close()
        if as_json:
            typer.echo(json.dumps([{"rank": h.rank, "score": h.score, "path": h.path} for h in hits]))
        elif paths_only:
            for h in hits:
                typer.echo(h.path)
        else:
            from p2w.render import hits_table

            Console().print(hits_table(hits))


def _query_image(engine: Any, path: str | None) -> Any:
    """Open the query image as the catalog's images were (JPEG draft decoding at the model's input size)."""
    if path is None:
        return None
    from p2w.images import open_image

    size = engine.backbone.model.visual.image_size
    return open_image(path, draft=size if isinstance(size, int) else min(size))


@app.command("demo")
def demo_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the gallery and contact sheet [default: P2W_HOME/demo]"),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """See composed retrieval work, offline: the embedded micro model on a small gallery of coloured clothes."""
    with _user_errors():
        from p2w import demo
        from p2w.render import LibraryProgress, demo_table
        from p2w.weights import BUILTIN_TAG

        settings = Settings.from_env()
        folder = out or settings.home / "demo"
        err_console.print(
            f"p2w demo: the embedded model {demo.MODEL} (a micro CLIP trained by p2w on Fashion-MNIST items in "
            "eight colours) and its Pic2Word mapper; nothing is downloaded"
        )
        mapper = _mapper_or_default(None, demo.MODEL, BUILTIN_TAG, download=False)  # the shipped one
        with LibraryProgress(err_console) as progress:
            result = demo.run(
                folder, lambda: _load(demo.MODEL, BUILTIN_TAG, device, "auto", mapper=mapper), settings, progress
            )
        console = Console()
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


@app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Show the catalogs: backbone, photos, size on disk, location."""
    with _user_errors():
        from p2w.library import status
        from p2w.render import status_table

        infos = status(Settings.from_env())
        if as_json:
            rows = [
                {
                    "backbone": c.backbone,
                    "files": c.files,
                    "skipped": c.skipped,
                    "bytes": c.bytes_on_disk,
                    "folder": str(c.folder),
                    "index_current": c.ann_current,
                }
                for c in infos
            ]
            typer.echo(json.dumps(rows))
        elif not infos:
            err_console.print(f"no catalogs in {Settings.from_env().home}; build one with: p2w index DIR")
        else:
            Console().print(status_table(infos))


@app.command("eval")
def eval_command(
    benchmark: Annotated[str, typer.Argument(help="fashioniq, cirr, imagenet-r, circo, coco or micro-fashion")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="the benchmark's folder, in its published layout (micro-fashion: Fashion-MNIST)"),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="pic2word, image, text, average or all")] = "pic2word",
    split: Annotated[str | None, typer.Option("--split", help="val (or test1 for CIRR) [default: val]")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="FashionIQ category (repeatable)")] = None,
    caption_order: Annotated[
        str, typer.Option("--caption-order", help="FashionIQ: pic2word (cap2 and cap1) or both (averaged)")
    ] = "pic2word",
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 4,
    strict: Annotated[bool, typer.Option("--strict", help="missing images or queries are an error")] = False,
    save_predictions: Annotated[
        Path | None, typer.Option("--save-predictions", help="write the top-50 gallery names of every query (JSON)")
    ] = None,
    submission: Annotated[
        Path | None, typer.Option("--submission", help="CIRR test1 / CIRCO test: folder for the server files")
    ] = None,
    gallery: Annotated[Path | None, typer.Option("--gallery", help="CIRCO: the COCO 2017 unlabeled images")] = None,
    query_style: Annotated[
        str, typer.Option("--query-style", help="CIRCO: caption (relative caption) or concept (shared concept first)")
    ] = "caption",
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Benchmark numbers in the papers' protocols, e.g. p2w eval fashioniq --data fashion-iq/"""
    with _user_errors():
        from p2w.render import eval_table

        runners = {
            "fashioniq": "p2w.evaluation.fashioniq",
            "cirr": "p2w.evaluation.cirr",
            "imagenet-r": "p2w.evaluation.imagenet_r",
            "circo": "p2w.evaluation.circo",
            "coco": "p2w.evaluation.coco",
            "micro-fashion": "p2w.evaluation.micro_fashion",
        }
        if benchmark not in runners:
            raise P2WError(f"unknown benchmark {benchmark!r}; use {', '.join(runners)}")
        if benchmark == "micro-fashion":
            from p2w.microworld import DEFAULT_DATA
            from p2w.weights import BUILTIN_MODELS

            data = data or DEFAULT_DATA  # the world of the embedded model, which is this benchmark's default
            model = model or BUILTIN_MODELS[0]
            split = split or "test"
        if data is None:
            raise P2WError(f"{benchmark} needs --data DIR, the benchmark's folder in its published layout")
        if not data.is_dir():
            raise P2WError(f"benchmark folder not found: {data}")
        import importlib

        module = importlib.import_module(runners[benchmark])
        module.check_layout(data)  # before a mapper is looked for or the model loaded
        if mode in ("pic2word", "all"):
            mapper = _mapper_or_default(mapper, model, pretrained, download)
        run = module.evaluate
        kwargs: dict[str, Any] = {}
        if benchmark == "fashioniq":
            kwargs = {"categories": category, "caption_order": caption_order}
        elif benchmark == "cirr":
            kwargs = {"submission": submission}
        elif benchmark == "circo":
            kwargs = {"submission": submission, "gallery": gallery, "query_style": query_style}
        engine = _load(model, pretrained, device, precision, mapper=mapper, force_mapper=force_mapper)
        results = run(
            engine,
            data,
            Settings.from_env().home,
            mode=mode,
            split=split or "val",
            strict=strict,
            workers=workers,
            batch_size=batch_size,
            **kwargs,
        )
        if save_predictions is not None:
            from p2w.output import write_json

            preds = results[0].predictions if len(results) == 1 else {r.mode: r.predictions for r in results}
            write_json(save_predictions, preds)
        if as_json:
            payload = results[0].to_json() if len(results) == 1 else [r.to_json() for r in results]
            typer.echo(json.dumps(payload))
        else:
            for r in results:
                Console().print(eval_table(r))


@app.command("train")
def train_command(
    data: Annotated[
        Path | None, typer.Option("--data", help="image folder (recursive), list file, or reference CSV")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="name to register the mapper under")] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16/fp16 autocast on CUDA), fp32, ...")
    ] = "auto",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="per process")] = 128,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.1,
    warmup: Annotated[int | None, typer.Option("--warmup", help="steps [default: 10% of the run, <= 10000]")] = None,
    hidden_dim: Annotated[int, typer.Option("--hidden-dim", min=1)] = 512,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0)] = 0.1,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.5)] = 0.02,
    augment_views: Annotated[int, typer.Option("--augment-views", min=0, help="cached random crops per image")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 4,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="encode images at every step (slow)")] = False,
    no_graphs: Annotated[bool, typer.Option("--no-cuda-graphs", help="run the text tower eagerly on CUDA")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=0, help="stop after this many steps")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run of --name from its checkpoint")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace a mapper or run of the same name")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Train a mapper on unlabeled images, e.g. p2w train --data imgs/ --name mine"""
    with _user_errors():
        from p2w.render import TrainProgress, train_table
        from p2w.train import TrainConfig, train

        if data is None and not resume:
            raise P2WError("--data is required: an image folder, a list file or a CSV (or --resume a run)")
        cfg = TrainConfig(
            data=str(data) if data else "",
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
            hidden_dim=hidden_dim,
            dropout=dropout,
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
            Console().print(train_table(result))
        err_console.print(f"mapper {result.name!r} saved to {result.mapper_path}; use it with --mapper {result.name}")


@mapper_app.command("download")
def mapper_download(
    source: Annotated[str, typer.Argument(help="known name (pic2word-vit-l-14), hf://owner/repo/file, URL or file")],
    name: Annotated[str | None, typer.Option("--name", help="name to register it under")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="expected SHA-256 of the downloaded file")] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    keep_source: Annotated[bool, typer.Option("--keep-source", help="keep the downloaded checkpoint")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace a mapper of the same name")] = False,
) -> None:
    """Download a published mapper and register it, e.g. p2w mapper download pic2word-vit-l-14"""
    with _user_errors():
        from p2w.mappers import download
        from p2w.render import DownloadProgress

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
            )
        err_console.print(f"registered mapper {got.name!r} for {got.backbone} (source sha256 {got.sha256})")
        if got.source_kept:
            err_console.print(f"the source checkpoint stays at {got.source_kept}")
        typer.echo(str(got.path))


@mapper_app.command("list")
def mapper_list(as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """List the registered mappers (name, backbone, dims, size, source, default)."""
    with _user_errors():
        from p2w.mappers import registered
        from p2w.render import mappers_table

        rows = registered()
        if as_json:
            typer.echo(json.dumps([r.to_json() for r in rows]))
        elif not rows:
            err_console.print("no mappers yet: p2w mapper download pic2word-vit-l-14, p2w mapper import, or p2w train")
        else:
            Console().print(mappers_table(rows))


@mapper_app.command("remove")
def mapper_remove(name: Annotated[str, typer.Argument(help="registered mapper name")]) -> None:
    """Delete a registered mapper."""
    with _user_errors():
        from p2w.mappers import remove

        err_console.print(f"removed {remove(name)}")


@mapper_app.command("default")
def mapper_default(name: Annotated[str, typer.Argument(help="registered mapper name")]) -> None:
    """Make a mapper the default of its backbone (used when --mapper is not given)."""
    with _user_errors():
        from p2w.mappers import set_default

        err_console.print(f"{name!r} is now the default mapper of {set_default(name)}")


def _mapper_or_default(mapper: str | None, model: str | None, pretrained: str | None, download: bool) -> str:
    """``--mapper`` as given, else the backbone's default, else (only with ``--download``) the known published one."""
    if mapper is not None:
        return mapper
    from p2w.mappers import default_or_known

    settings = Settings.from_env()
    spec = settings.backbone(model, pretrained)
    return default_or_known(spec.id, settings, download, notify=err_console.print)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Once torch is loaded, the interpreter's own teardown takes ~0.9 s (measured: docs/performance.md); every command
    has committed, closed and flushed everything by the time it returns, so p2w then exits at once.
    """
    code: int = 0
    try:
        app(args=argv, prog_name="p2w")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if "torch" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
