"""``p2w serve``: the resident engine with a web page, and what warm ``p2w search`` talks to."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated

import typer

from p2w.cli.root import (
    DeviceOpt,
    DownloadOpt,
    ForceMapperOpt,
    IndexOpt,
    KnnIndexOpt,
    KnnServiceOpt,
    MapperOpt,
    ModelOpt,
    PrecisionOpt,
    PretrainedOpt,
    app,
    load_engine,
    note,
    user_errors,
)
from p2w.settings import Settings

if TYPE_CHECKING:
    from p2w.engine import Engine
    from p2w.serve.run import Address


@app.command("serve", short_help="A web page for composed search: p2w serve --open")
def serve_command(
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    mapper: MapperOpt = None,
    force_mapper: ForceMapperOpt = False,
    download: DownloadOpt = False,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on; anything but loopback lets others reach it")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port; 0 picks a free one")] = 0,
    open_browser: Annotated[bool, typer.Option("--open", help="open the page in a browser")] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    index: IndexOpt = None,
    knn_service: KnnServiceOpt = None,
    knn_index: KnnIndexOpt = None,
) -> None:
    """Serve a web page for composed search (and warm p2w search), e.g. p2w serve --open. The first line printed is
    the address to open, with its access token; Ctrl-C stops."""
    with user_errors():
        from p2w.serve.query import GalleryChoice
        from p2w.serve.run import serve

        if not _loopback(host):
            note(
                f"warning: listening on {host}: anyone who can reach this machine and has the token can search and "
                "see your photos"
            )

        def load() -> Engine:  # on the server's engine thread (p2w.serve.service.start says why)
            engine = load_engine(
                model,
                pretrained,
                device,
                precision,
                mapper=mapper or "default",
                force_mapper=force_mapper,
                download=download,
            )
            if engine.mapper is None:
                note(f"note: {engine.missing_mapper}; image, text and average modes still work")
            return engine

        def ready(address: Address, engine: Engine) -> None:
            url = address.url
            typer.echo(url)  # the first line on stdout, for scripts
            note(f"p2w serve: {engine.backbone.id}; Ctrl-C stops")
            if open_browser:
                import webbrowser

                webbrowser.open(url)

        gallery = GalleryChoice(index, knn_service, knn_index)
        serve(load, Settings.from_env(), host=host, port=port, on_ready=ready, gallery=gallery)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
