"""``search``: a catalog search, answered where it is answered best — the one place that chooses.

A running ``p2w serve`` of the same backbone (and, for a pic2word query, the same mapper) answers at once, its model
already loaded; otherwise, or when the request asks for what that server does not take (its limits), for a device or
precision of its own, or for ``server=False``, this process loads the model and searches. Both take the same request
and give the same hits, so a script behaves the same whether a server runs or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2w.core.compose import QueryPlan
from p2w.core.cutoff import Cutoff
from p2w.core.dates import Where
from p2w.core.gallery import Gallery, Hit
from p2w.errors import P2WError
from p2w.mappers.choice import MapperChoice, plan_query
from p2w.serve.client import warm_search
from p2w.settings import Settings
from p2w.spec import BackboneSpec


@dataclass(frozen=True)
class GalleryChoice:
    """What a search runs on: the catalog of the backbone (nothing given), the FAISS index over the layout in
    ``index``, or the index ``knn_index`` (None: its first) of the clip-retrieval back end at ``knn_service``."""

    index: Path | None = None
    knn_service: str | None = None
    knn_index: str | None = None

    def __post_init__(self) -> None:
        if self.index is not None and self.knn_service is not None:
            raise P2WError("search an --index or a --knn-service, not both")
        if self.knn_index is not None and self.knn_service is None:
            raise P2WError("--knn-index names an index of a --knn-service URL; give the URL too")

    @property
    def catalog(self) -> bool:
        """Whether this is the catalog (which a running ``p2w serve`` of the backbone answers warm)."""
        return self.index is None and self.knn_service is None


@dataclass(frozen=True)
class Request:
    """What to search for: reference images (paths; the i-th ``*`` of the prompt takes the i-th), words, mode and
    template (None: the library's choice), how many results, which photos may be among them (a folder, a date range:
    ``Where.parse(within, after, before)``), the ANN's search breadth, in what gallery (``GalleryChoice``; the catalog
    by default), which results are kept (``Cutoff``; all by default), and the text side's weight in the modes
    weighed by alpha (None: the backbone's default, ``p2w.core.compose.default_alpha``)."""

    images: tuple[str, ...] = ()
    text: str | None = None
    mode: str | None = None
    prompt: str | None = None
    k: int = 10
    where: Where = field(default_factory=Where)
    ef: int | None = None
    gallery: GalleryChoice = field(default_factory=GalleryChoice)
    cutoff: Cutoff = field(default_factory=Cutoff)
    alpha: float | None = None


@dataclass(frozen=True)
class Backend:
    """Which model answers: ``p2w.load``'s options, and whether a running ``p2w serve`` may answer."""

    model: str | None = None
    pretrained: str | None = None
    mapper: str | None = None  # None: the backbone's default (``p2w.mappers.choice.choose_mapper``)
    device: str | None = None
    precision: str = "auto"
    force_mapper: bool = False
    download: bool = False
    server: bool = True


@dataclass(frozen=True)
class Answer:
    """The hits, the plan the query was encoded with, and whether a running server answered."""

    hits: list[Hit]
    plan: QueryPlan
    warm: bool


def search(
    request: Request,
    backend: Backend | None = None,
    settings: Settings | None = None,
    notify: Callable[[str], object] | None = None,
) -> Answer:
    """The catalog's closest photos to ``request``, e.g. ``search(Request(("shirt.jpg",), "in red"))``.

    The mode, template and mapper are chosen before any model loads (``p2w.mappers.choice.plan_query``); a missing
    catalog fails before the model loads too. ``notify`` hears of a mapper download (``download=True`` only).
    """
    backend = backend or Backend()
    settings = settings or Settings.from_env()
    spec = settings.backbone(backend.model, backend.pretrained)
    has_text = bool(request.text)
    qp, choice = plan_query(
        request.mode, len(request.images), has_text, request.prompt, backend.mapper, spec.id, settings,
        backend.download, notify, request.alpha,
    )  # fmt: skip
    if _may_be_warm(backend) and request.gallery.catalog:  # a server's record is its catalog's
        hits = warm_search(settings, spec.id, choice.path if choice else None, _wire(request, qp), _paths(request))
        if hits is not None:
            return Answer(hits, qp, True)
    return Answer(_here(spec, settings, backend, choice, qp, request), qp, False)


def _may_be_warm(backend: Backend) -> bool:
    """A server answers only for its own device, precision and mapper checks."""
    return backend.server and not (backend.force_mapper or backend.device or backend.precision != "auto")


def _wire(request: Request, qp: QueryPlan) -> dict[str, Any]:
    """The server's JSON query (``p2w.serve.requests.Query``)."""
    query: dict[str, Any] = {"text": request.text, "mode": qp.mode, "prompt": qp.template, "alpha": qp.alpha}
    query["k"] = request.k
    query["ef"] = request.ef
    return {**query, **request.where.to_wire(), **request.cutoff.to_wire()}


def _paths(request: Request) -> list[Path]:
    return [Path(i) for i in request.images]


def _here(
    spec: BackboneSpec,
    settings: Settings,
    backend: Backend,
    choice: MapperChoice | None,
    qp: QueryPlan,
    request: Request,
) -> list[Hit]:
    """Load the model in this process and search (the cold path)."""
    import p2w

    gallery = open_gallery(spec, settings, request.gallery)  # before the model: a missing gallery fails fast
    try:
        engine = p2w.load(
            model=backend.model,
            pretrained=backend.pretrained,
            mapper=choice.path if choice is not None else None,
            device=backend.device,
            precision=backend.precision,
            force_mapper=backend.force_mapper,
            settings=settings,
        )
        query = engine.encode_query(list(request.images), request.text, qp.mode, qp.template, alpha=qp.alpha)
        return request.cutoff.apply(gallery.search(query, request.k, request.where, request.ef))
    finally:
        gallery.close()


def open_gallery(spec: BackboneSpec, settings: Settings, choice: GalleryChoice | None = None) -> Gallery:
    """What a search of ``spec``'s vectors runs on (``choice``; None: the catalog of ``spec``). An index of another
    backbone's vectors is refused, naming the options that search it."""
    choice = choice or GalleryChoice()
    if choice.knn_service is not None:
        from p2w.datasets.knn_service import KnnService

        return KnnService(choice.knn_service, choice.knn_index)
    if choice.index is None:
        from p2w.library.search import CatalogGallery, open_catalog

        return CatalogGallery(open_catalog(spec, settings))
    from p2w.datasets.index_gallery import IndexGallery
    from p2w.spec import options_for

    gallery = IndexGallery(choice.index.expanduser())
    if gallery.backbone is not None and gallery.backbone != spec.id:
        gallery.close()
        hint = options_for(gallery.backbone)
        raise P2WError(f"{gallery.name} holds embeddings of {gallery.backbone}, not {spec.id}"
                       + (f"; search it with {hint}" if hint else ""))  # fmt: skip
    return gallery
