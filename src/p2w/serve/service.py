"""The resident engine behind ``p2w serve``: one loaded model and mapper, the gallery it searches (the catalog of its
backbone with its ANN index held in memory, a FAISS index over a layout, or a clip-retrieval back end:
``p2w.serve.query.open_gallery``), uploads kept as image features, thumbnails made once.

Every method runs on one thread, the one the engine was loaded on (``start``; ``p2w.serve.http`` sends every call
there): the engine and the SQLite connection are never shared between threads. Input is treated as hostile: uploads
are limited in bytes and pixels, originals are served only for a gallery's local files, by id, while the file on disk
is still the one embedded (``p2w.serve.files``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image

from p2w import fspath
from p2w.core.compose import MODES, WEIGHED, default_alpha
from p2w.core.cutoff import DROP
from p2w.core.dates import Where
from p2w.core.gallery import Gallery, Hit, LocalFile
from p2w.core.images import decode_image, open_image
from p2w.engine import Engine
from p2w.errors import ImageError, ImageTooLarge, P2WError
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, catalog_dir
from p2w.library.search import CatalogGallery
from p2w.library.sheet import THUMB, thumbnail
from p2w.serve.errors import NotFound, TooLarge, Unavailable, Unsupported
from p2w.serve.files import open_checked, servable, thumb_key
from p2w.serve.query import GalleryChoice, open_gallery
from p2w.serve.requests import DuplicatesQuery, Limits, Query, Reference
from p2w.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Original:
    """A catalogued photo's file, open and checked (``Service.original``): read ``size`` bytes, then close it."""

    file: BinaryIO
    name: str
    size: int


class Service:
    """The engine and the gallery of one backbone, e.g. ``Service(p2w.load(...), Settings.from_env())``; ``gallery``:
    what it searches (the catalog when not given)."""

    def __init__(
        self, engine: Engine, settings: Settings, limits: Limits | None = None, gallery: GalleryChoice | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = limits or Limits()
        self.choice = gallery or GalleryChoice()
        self.backbone = engine.backbone.id
        self.folder = catalog_dir(settings.home, self.backbone)
        self.thumbs = settings.home / "thumbnails"
        self._catalog: Catalog | None = None
        self._ann: ann_mod.Ann | None = None
        self._other: Gallery | None = None  # an index or a back end, opened once
        self._duplicates: tuple[Any, list[Any]] | None = None  # (what was asked of which generation, the groups)
        self._uploads: OrderedDict[str, torch.Tensor] = OrderedDict()  # id -> features (embed_dim,)
        self.timings: dict[str, float] = {}  # ms by stage of the last upload or search (the Server-Timing header)

    # ---- what the page asks first ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Backbone, mapper, gallery and its size and what is missing, for the page's header and messages."""
        mapper = self.engine.mapper_name
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "mapper": mapper,
            "modes": list(MODES),
            "alphas": {m: default_alpha(m, self.backbone) for m in WEIGHED},  # the page's text weight placeholder
            "prompt": self.engine.default_prompt,  # the page's placeholder: the mapper's method's template
            "drop": DROP,  # the page's cutoff (``p2w search --cutoff``)
            "photos": 0,
            "gallery": None,
            "message": None,
            "max_upload_bytes": self.limits.upload_bytes,
        }
        if mapper is None:
            out["message"] = f"no mapper for {self.backbone}: {self.engine.missing_mapper}"
        try:
            gallery = self._gallery()
            out["photos"], out["gallery"] = gallery.count(), gallery.name
        except Unavailable as exc:
            out["message"] = str(exc)
        return out

    # ---- uploads -------------------------------------------------------------------------------------------------
    def upload(self, data: bytes) -> dict[str, Any]:
        """Decode an uploaded image (limits first) and keep its features; returns ``{"upload": id, ...}``."""
        if len(data) > self.limits.upload_bytes:
            raise TooLarge(f"the upload is {len(data)} bytes, over the limit of {self.limits.upload_bytes}")
        if not data:
            raise Unsupported("the upload is empty; send an image file")
        self.timings.clear()
        key = hashlib.sha256(data).hexdigest()[:32]
        bb = self.engine.backbone
        if key not in self._uploads:
            try:
                with self._stage("decode"):
                    image = decode_image(data, "the upload", bb.draft_size, self.limits.upload_pixels)
            except ImageTooLarge as exc:
                raise TooLarge(str(exc)) from exc
            except ImageError as exc:
                raise Unsupported(str(exc)) from exc
            with self._stage("preprocess"):
                pixels = bb.preprocess(image).unsqueeze(0)  # (1, 3, H, W), as Engine.image_features would
            with self._stage("tower"), torch.inference_mode():  # as Engine.image_features, the stages apart
                self._uploads[key] = bb.encode_image(pixels)[0].float().cpu()
            while len(self._uploads) > self.limits.uploads_kept:
                self._uploads.popitem(last=False)
        self._uploads.move_to_end(key)
        return {"upload": key}

    # ---- search ----------------------------------------------------------------------------------------------------
    def search(self, q: Query) -> dict[str, Any]:
        """The hits of ``q``: ``{"results": [{"rank", "score", "path", "size", "mtime", "id", "local", "refine",
        ...}, ...]}`` (``caption``, ``url`` where the gallery has them)."""
        self.timings.clear()
        gallery = self._gallery()
        with self._stage("reference"):
            features = self._reference(gallery, q)
        with self._stage("compose"):
            vector = self.engine.encode_query_features(features, q.text, q.mode, q.prompt, q.alpha)
        with self._stage("ann"):
            hits = q.cutoff().apply(gallery.search(vector, q.k, q.where(), q.ef))
        return {"results": [self._result(gallery, h) for h in hits]}

    def _result(self, gallery: Gallery, hit: Hit) -> dict[str, Any]:
        """A hit for the page: ``local`` (its thumbnail and file may be asked for) and ``refine`` (it may be a
        reference image: stored features, or a local file to encode)."""
        if self.choice.catalog:  # the catalog's hits are files on disk (its search drops the gone) with features
            local = refine = True
        else:
            local = gallery.local_file(hit.id) is not None
            refine = local or gallery.features(hit.id) is not None
        return {**hit.to_json(), "size": hit.size, "mtime": hit.mtime, "id": hit.id, "local": local, "refine": refine}

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = 1000 * (time.perf_counter() - start)

    def _reference(self, gallery: Gallery, q: Query) -> torch.Tensor | None:
        """Unnormalised image features of the query's reference images: ``(embed_dim,)`` for one, ``(k, embed_dim)``
        for several, None for none."""
        refs = q.images or ((Reference(q.upload, q.photo),) if q.upload is not None or q.photo is not None else ())
        if not refs:
            return None
        features = [self._features(gallery, ref) for ref in refs]
        return features[0] if len(features) == 1 else torch.stack(features)

    def _features(self, gallery: Gallery, ref: Reference) -> torch.Tensor:
        if ref.upload is not None:
            if ref.upload not in self._uploads:
                raise NotFound("that upload is no longer held by the server; upload the image again")
            self._uploads.move_to_end(ref.upload)
            return self._uploads[ref.upload]
        assert ref.photo is not None
        try:
            local, stored = gallery.local_file(ref.photo), gallery.features(ref.photo)
        except P2WError as exc:  # an id the gallery does not have
            raise NotFound(str(exc)) from exc
        if local is not None:  # a photo on disk must still be the one embedded, whatever is stored of it
            servable(gallery, ref.photo)
        if stored is not None:  # the gallery's own vector and norm: no image tower
            return torch.from_numpy(stored.astype("float32"))
        if local is None:
            raise NotFound(f"item {ref.photo} of {gallery.name} has neither stored features nor a local file")
        image = open_image(local.path, draft=self.engine.backbone.draft_size)  # a layout without norm: the image
        return self.engine.image_features([image])[0].float().cpu()

    # ---- near-duplicates -----------------------------------------------------------------------------------------
    def duplicates(self, ask: DuplicatesQuery) -> dict[str, Any]:
        """The catalog's groups of near-identical photos (``p2w.library.duplicates``), at most ``Limits.groups`` of
        them, each photo with its id (for its thumbnail); kept until the catalog changes, so asking again is free."""
        if not self.choice.catalog:
            raise Unsupported(
                f"near-duplicates are found in a photo catalog; this server searches {self._gallery().name}"
            )
        from p2w.library.duplicates import THRESHOLD, duplicates

        catalog = self._open()
        ann = self._current_ann(catalog)
        key = (ann.generation, ask)
        if self._duplicates is None or self._duplicates[0] != key:
            threshold = THRESHOLD if ask.threshold is None else ask.threshold
            where = Where(ask.within) if ask.within else None
            self._duplicates = key, duplicates(catalog, threshold, where, ann)
        groups = self._duplicates[1]
        shown = [{"photos": [{**fspath.to_json(p.path), "id": p.id, "similarity": p.similarity, "size": p.size}
                             for p in g.photos]} for g in groups[: self.limits.groups]]  # fmt: skip
        return {"groups": shown, "count": len(groups)}

    # ---- files ---------------------------------------------------------------------------------------------------
    def original(self, photo: int) -> Original:
        """The file of gallery item ``photo``, open, if it is still the file that was embedded (the caller reads
        ``size`` bytes from it and closes it)."""
        file = servable(self._gallery(), photo)
        opened, size = open_checked(file, photo)
        return Original(opened, Path(file.path).name, size)

    def thumbnail(self, photo: int) -> Path:
        """A JPEG thumbnail of gallery item ``photo``, made once and kept by content (``files.thumb_key``)."""
        file = servable(self._gallery(), photo)
        key = thumb_key(file) + ("" if file.time is None else f"-{file.time:.3f}")
        target = self.thumbs / key[:2] / f"{key}-{THUMB}.jpg"
        if not target.is_file():
            thumbnail(self._image(file, photo), target)
        return target

    def _image(self, file: LocalFile, photo: int) -> Image.Image:
        """The picture of a gallery item's local file (opened and checked: ``files.open_checked``): the photo, or a
        video's frame at its time."""
        opened, size = open_checked(file, photo)
        with opened:
            if file.time is not None:
                from p2w.core.video import VideoError, frame_at

                try:
                    return frame_at(opened, file.time)
                except VideoError as exc:
                    raise NotFound(f"video {photo} {exc}") from exc
            data = opened.read(size)
        try:
            return decode_image(data, file.path, draft=THUMB)
        except ImageError as exc:
            raise NotFound(f"photo {photo} cannot be read: {exc}") from exc

    # ---- the gallery -----------------------------------------------------------------------------------------------
    def _gallery(self) -> Gallery:
        """The catalog with its current ANN index, or the index or back end (opened once)."""
        if self.choice.catalog:
            catalog = self._open()
            return CatalogGallery(catalog, self._current_ann(catalog))
        if self._other is None:
            try:
                self._other = open_gallery(self.engine.backbone.spec, self.settings, self.choice)
            except P2WError as exc:
                raise Unavailable(str(exc)) from exc
        return self._other

    def _open(self) -> Catalog:
        if self._catalog is None:
            try:
                self._catalog = Catalog(self.folder, self.backbone)
            except P2WError as exc:
                raise Unavailable(f"no catalog for {self.backbone} yet; build one with: p2w index DIR") from exc
        if self._catalog.is_empty():
            raise Unavailable(f"the catalog of {self.backbone} is empty; add photos with: p2w index DIR")
        return self._catalog

    def _current_ann(self, catalog: Catalog) -> ann_mod.Ann:
        """The held index; reloaded once ``p2w index`` has committed a newer one (while it runs, the held one keeps
        answering, so searches never wait for indexing)."""
        generation = catalog.generation
        stale = self._ann is None or self._ann.generation != generation
        if stale and (self._ann is None or ann_mod.is_current(self.folder, generation)):
            self._ann = ann_mod.load(catalog, save_rebuilt=False)
        assert self._ann is not None
        return self._ann

    def prepare(self) -> None:
        """Open the gallery (the catalog and its index) now, before the first query; a missing one is not an error."""
        try:
            self._gallery()
        except Unavailable as exc:
            log.info("%s", exc)

    def close(self) -> None:
        """Close the catalog, or the index or back end."""
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        if self._other is not None:
            self._other.close()
            self._other = None


def start(
    load: Callable[[], Engine], settings: Settings, limits: Limits | None = None, gallery: GalleryChoice | None = None
) -> tuple[Service, ThreadPoolExecutor]:
    """A ``Service`` over the engine ``load()`` returns (e.g. ``lambda: p2w.load(mapper="default")``) and the one
    thread it belongs to: ``load`` runs there, and every call of the Service must run there too
    (``worker.submit(service.search, query)``). An error of ``load`` is raised here.

    Why the engine is loaded on that thread: PyTorch runs its CPU kernels on OpenMP threads, and libgomp gives every
    thread that starts parallel work a team of its own; once a process holds more OpenMP threads than the machine
    has CPUs, libgomp spins 100 times instead of 300,000 before a waiting thread sleeps (GCC's manual,
    ``GOMP_SPINCOUNT``), and kernels then pay for wake-ups. A model loaded on one thread and queried on another is
    exactly that: ViT-B-32's text tower took 28-30 ms a query so on 2 CPUs, against 20-21 ms when one thread does both
    (docs/performance.md, "p2w serve"). An index or a back end (``gallery``) is opened here too: a missing one is an
    error of ``start``; a missing catalog is not (the page says how to make one).
    """
    worker = engine_thread()
    try:
        service = worker.submit(lambda: Service(load(), settings, limits, gallery)).result()
        if not service.choice.catalog:  # an index or a back end asked for by name: its errors now, not in the page
            worker.submit(service._gallery).result()
    except BaseException:
        worker.shutdown(wait=False, cancel_futures=True)
        raise
    return service, worker


def engine_thread() -> ThreadPoolExecutor:
    """A single-thread executor for a Service's calls (``start`` makes one and loads the engine on it)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2w-engine")
