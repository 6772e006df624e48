"""The root of the ``p2w`` Typer app: shared options, logging, and the one place a ``P2WError`` becomes an exit code."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from p2w.core.devices import workers_help
from p2w.errors import P2WError
from p2w.fspath import shown

app = typer.Typer(
    name="p2w",
    help="Composed image retrieval with Pic2Word: find a photo from another photo plus words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" must not be read as markup (and vanish)
)

embed_app = typer.Typer(
    help="Print embeddings of images or composed queries.", no_args_is_help=True, rich_markup_mode=None
)
mapper_app = typer.Typer(help="Manage Pic2Word mappers.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(embed_app, name="embed")
app.add_typer(mapper_app, name="mapper")

# soft_wrap: a path or a command printed for the user to copy is never broken over two lines, whatever the width;
# markup and emoji off: what p2w prints is data (a file named "[draft] :x: shirt.jpg" is printed as it is named)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
_verbose = False  # -v: tracebacks of errors too


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
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode", help="pic2word, slerp, weighted, pic2word-slerp, average, image or text [default: from the query]"
    ),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        help="slerp, weighted, pic2word-slerp: the text side's weight, 0 (the image) to 1 [default: the backbone's]",
    ),
]
MapperOpt = Annotated[str | None, typer.Option("--mapper", help="mapper name or file [default: the model's default]")]
ForceMapperOpt = Annotated[bool, typer.Option("--force-mapper", help="use a mapper made for another model")]
# what a search runs on instead of the catalog (``p2w.serve.query.GalleryChoice``): p2w search and p2w serve
IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", help="the FAISS index of this layout (p2w index --embeddings), not the catalog"),
]
KnnServiceOpt = Annotated[
    str | None, typer.Option("--knn-service", help="a running clip-retrieval back end (its URL), not the catalog")
]
KnnIndexOpt = Annotated[
    str | None, typer.Option("--knn-index", help="with --knn-service: which of its indexes [default: its first]")
]
DownloadOpt = Annotated[bool, typer.Option("--download", help="fetch the known mapper if none is set up")]
# which photos a search may return and which results it keeps (``p2w.core.dates.Where``, ``p2w.core.cutoff.Cutoff``)
InOpt = Annotated[Path | None, typer.Option("--in", help="only photos under this folder")]
AfterOpt = Annotated[
    str | None, typer.Option("--after", help="only photos taken from this date on: 2023, 2023-07, 2023-07-14")
]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="only photos taken before this date (same forms)")]
MinScoreOpt = Annotated[float | None, typer.Option("--min-score", help="only results scoring at least this (cosine)")]
CutoffOpt = Annotated[
    bool, typer.Option("--cutoff", help="only the results before the scores drop (a gap of 30 median gaps)")
]
QueryArgs = Annotated[
    list[str] | None,
    typer.Argument(
        help="query images (several: the i-th '*' of --prompt takes the i-th), then the text, e.g. shirt.jpg 'in red'",
        show_default=False,
    ),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help=workers_help())]
# every command takes the four common options, so a script can pass the same ones to all; these load no model
UnusedModelOpt = Annotated[
    str | None, typer.Option("--model", help="accepted for uniformity; the mapper's name says its backbone")
]
UnusedPretrainedOpt = Annotated[
    str | None, typer.Option("--pretrained", help="accepted for uniformity; the mapper's name says its backbone")
]
UnusedDeviceOpt = Annotated[str | None, typer.Option("--device", help="accepted for uniformity; no model is loaded")]
UnusedPrecisionOpt = Annotated[str, typer.Option("--precision", help="accepted for uniformity; no model is loaded")]


def note(text: str) -> None:
    """A line for the user on stderr (a path in it shown with ``p2w.fspath.shown``)."""
    err_console.print(shown(text))


def out_console() -> Console:
    """The console for results on stdout (made per command: tests swap ``sys.stdout``): data printed as data, and
    written to a pipe or a file, tables as wide as their rows (a path is never folded at 80 columns)."""
    wide = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(soft_wrap=True, markup=False, emoji=False, highlight=False, width=wide)


PIPE_WIDTH = 100_000  # "unlimited": rich sizes a table to its content and wraps nothing below this


def _version(value: bool) -> None:
    if value:
        from p2w.version import version

        typer.echo(f"p2w {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="show third-party progress, and the traceback of an error")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    global _verbose
    _verbose = verbose
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
def user_errors() -> Iterator[None]:
    """Turn the library's typed errors into one ``error: ...`` line on stderr and exit status 1 (with ``-v``, the
    traceback and the error's causes first)."""
    try:
        yield
    except P2WError as exc:
        if _verbose:
            err_console.print(shown("".join(traceback.format_exception(exc))))
        err_console.print(Text.assemble(("error:", "bold red"), " ", shown(str(exc))))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        note("interrupted")
        raise typer.Exit(130) from None


def load_engine(
    model: str | None,
    pretrained: str | None,
    device: str | None,
    precision: str,
    mapper: str | Path | None = None,
    **kw: Any,
) -> Any:
    """``p2w.load`` with the command's options; no mapper unless the command names one (or ``"default"``)."""
    import p2w

    return p2w.load(model=model, pretrained=pretrained, device=device, precision=precision, mapper=mapper, **kw)


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
