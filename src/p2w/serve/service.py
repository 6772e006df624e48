"""The resident engine behind ``p2w serve``: one loaded model and mapper, the catalog of its backbone and the ANN
index held in memory, uploads kept as image features, thumbnails made once.

Every method runs on one thread, the one the engine was loaded on (``start``; ``p2w.serve.http`` sends every call
there): the engine and the SQLite connection are never shared between threads. Input is treated as hostile: uploads
are limited in bytes and pixels, originals are served only for photos in the catalog, by id, when the file on disk is
still the one catalogued.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from p2w.core.compose import MODES
from p2w.core.images import decode_image, open_image
from p2w.engine import Engine
from p2w.errors import ImageError, ImageTooLarge, P2WError
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, Row, catalog_dir
from p2w.library.search import search
from p2w.library.sheet import THUMB, thumbnail
from p2w.settings import Settings

log = logging.getLogger(__name__)


class ServeError(P2WError):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class NotFound(ServeError):
    """No such photo (or not one the server may show)."""

    status = 404


class TooLarge(ServeError):
    """An upload over the byte or pixel limit."""

    status = 413


class Unsupported(ServeError):
    """An upload that is not an image p2w can read."""

    status = 415


class Unavailable(ServeError):
    """What the request needs is not set up yet (no catalog, no mapper)."""

    status = 409


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    upload_bytes: int = 32 << 20  # 32 MiB
    upload_pixels: int = 50_000_000  # 50 megapixels, after JPEG draft reduction
    k: int = 200  # results per search
    ef: int = 10_000  # the search breadth one query may ask for
    uploads_kept: int = 64  # uploads whose features are kept (least recently used dropped)
    images: int = 8  # reference images of one query


@dataclass(frozen=True)
class Query:
    """A composed search: reference images (uploads, catalog photos, or none), words, mode and template."""

    text: str | None = None
    mode: str | None = None
    prompt: str | None = None
    photo: int | None = None  # a catalog photo id as the reference image
    upload: str | None = None  # an upload id (``Service.upload``) as the reference image
    images: tuple[Reference, ...] = ()  # several references, in order: the i-th '*' of the prompt takes the i-th
    k: int = 24
    within: str | None = None  # only photos under this folder (absolute path)
    ef: int | None = None

    @classmethod
    def from_json(cls, data: Any, limits: Limits) -> Query:
        """A query from a request's JSON object; wrong types or values are a ``ServeError`` (400)."""
        if not isinstance(data, dict):
            raise ServeError("the search request must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ServeError(f"unknown search fields: {', '.join(unknown)}")
        for key in ("text", "mode", "prompt", "upload", "within"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ServeError(f"{key} must be a string")
        for key in ("photo", "k", "ef"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ServeError(f"{key} must be an integer")
        data = {**data, "images": _references(data.get("images"), limits)}
        q = cls(**{k: v for k, v in data.items() if v is not None and v != ""})
        if not 1 <= q.k <= limits.k:
            raise ServeError(f"k must be between 1 and {limits.k}")
        if q.ef is not None and not 1 <= q.ef <= limits.ef:
            raise ServeError(f"ef must be between 1 and {limits.ef}")
        if sum((q.photo is not None, q.upload is not None, bool(q.images))) > 1:
            raise ServeError("give the reference images one way: photo, upload, or images")
        if q.within is not None and not os.path.isabs(q.within):
            raise ServeError("within must be an absolute folder path")
        return q


@dataclass(frozen=True)
class Original:
    """A catalogued photo's file, open and checked (``Service.original``): read ``size`` bytes, then close it."""

    file: BinaryIO
    name: str
    size: int


@dataclass(frozen=True)
class Reference:
    """One reference image of a query: an upload id or a catalog photo id."""

    upload: str | None = None
    photo: int | None = None


def _references(value: Any, limits: Limits) -> tuple[Reference, ...]:
    """``[{"upload": ID} | {"photo": N}, ...]`` checked; anything else is a ``ServeError``."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limits.images:
        raise ServeError(f"images must be a list of at most {limits.images} references")
    out = []
    for item in value:
        if not isinstance(item, dict) or len(item) != 1:
            raise ServeError('each of images is {"upload": ID} or {"photo": N}')
        ((key, ref),) = item.items()
        if key == "upload" and isinstance(ref, str):
            out.append(Reference(upload=ref))
        elif key == "photo" and isinstance(ref, int) and not isinstance(ref, bool):
            out.append(Reference(photo=ref))
        else:
            raise ServeError('each of images is {"upload": ID} or {"photo": N}')
    return tuple(out)


class Service:
    """The engine, catalog and index of one backbone, e.g. ``Service(p2w.load(...), Settings.from_env())``."""

    def __init__(self, engine: Engine, settings: Settings, limits: Limits | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = limits or Limits()
        self.backbone = engine.backbone.id
        self.folder = catalog_dir(settings.home, self.backbone)
        self.thumbs = settings.home / "thumbnails"
        self._catalog: Catalog | None = None
        self._ann: ann_mod.Ann | None = None
        self._uploads: OrderedDict[str, torch.Tensor] = OrderedDict()  # id -> features (embed_dim,)
        self.timings: dict[str, float] = {}  # ms by stage of the last upload or search (the Server-Timing header)

    # ---- what the page asks first ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Backbone, mapper, catalog size and what is missing, for the page's header and messages."""
        mapper = self.engine.mapper_name
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "mapper": mapper,
            "modes": list(MODES),
            "prompt": self.engine.default_prompt,  # the page's placeholder: the mapper's method's template
            "photos": 0,
            "message": None,
            "max_upload_bytes": self.limits.upload_bytes,
        }
        if mapper is None:
            out["message"] = f"no mapper for {self.backbone}: {self.engine.missing_mapper}"
        try:
            out["photos"] = self._open().count()
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
        """The hits of ``q``: ``{"results": [{"rank", "score", "path", "size", "mtime", "id"}, ...]}``."""
        self.timings.clear()
        catalog = self._open()
        ann = self._current_ann(catalog)
        with self._stage("reference"):
            features = self._reference(catalog, q)
        with self._stage("compose"):
            vector = self.engine.encode_query_features(features, q.text, q.mode, q.prompt)
        within = Path(q.within) if q.within else None
        with self._stage("ann"):
            hits = search(catalog, vector, k=q.k, within=within, ef=q.ef, ann=ann)
        return {"results": [{**h.to_json(), "size": h.size, "mtime": h.mtime, "id": h.id} for h in hits]}

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = 1000 * (time.perf_counter() - start)

    def _reference(self, catalog: Catalog, q: Query) -> torch.Tensor | None:
        """Unnormalised image features of the query's reference images: ``(embed_dim,)`` for one, ``(k, embed_dim)``
        for several, None for none."""
        refs = q.images or ((Reference(q.upload, q.photo),) if q.upload is not None or q.photo is not None else ())
        if not refs:
            return None
        features = [self._features(catalog, ref) for ref in refs]
        return features[0] if len(features) == 1 else torch.stack(features)

    def _features(self, catalog: Catalog, ref: Reference) -> torch.Tensor:
        if ref.upload is not None:
            if ref.upload not in self._uploads:
                raise NotFound("that upload is no longer held by the server; upload the image again")
            self._uploads.move_to_end(ref.upload)
            return self._uploads[ref.upload]
        assert ref.photo is not None
        row = self._servable(catalog, ref.photo)
        norm = catalog.norms_for([row.id]).get(row.id)
        if norm is not None:  # the catalog's own vector and norm: no image tower
            unit = np.frombuffer(catalog.vectors_for([row.id])[row.id], dtype=np.float32)
            return torch.from_numpy(unit * np.float32(norm))
        image = open_image(row.path, draft=self.engine.backbone.draft_size)
        return self.engine.image_features([image])[0].float().cpu()

    # ---- files ---------------------------------------------------------------------------------------------------
    def original(self, photo: int) -> Original:
        """The file of catalog photo ``photo``, open, if it is still the file that was catalogued (the caller reads
        ``size`` bytes from it and closes it)."""
        row = self._servable(self._open(), photo)
        return Original(self._open_catalogued(row), Path(row.path).name, row.size)

    def thumbnail(self, photo: int) -> Path:
        """A JPEG thumbnail of catalog photo ``photo``, made once and kept by content hash."""
        row = self._servable(self._open(), photo)
        target = self.thumbs / row.hash[:2] / f"{row.hash}-{THUMB}.jpg"
        if not target.is_file():
            with self._open_catalogued(row) as file:
                data = file.read(row.size)
            try:
                image = decode_image(data, row.path, draft=THUMB)
            except ImageError as exc:
                raise NotFound(f"photo {photo} cannot be read: {exc}") from exc
            thumbnail(image, target)
        return target

    def _open_catalogued(self, row: Row) -> BinaryIO:
        """The file of ``row`` (``_servable``'s), opened without following a symlink (``O_NOFOLLOW``; ``O_NONBLOCK``,
        so that a FIFO cannot hang the open) and checked again on the open file: what is checked is what is read, so a
        file swapped after the path's check cannot be served."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(row.path, flags)
        except FileNotFoundError as exc:
            raise NotFound(f"photo {row.id} is gone from disk") from exc
        except OSError as exc:  # ELOOP: a symlink now stands there
            raise _changed(row) from exc
        file = os.fdopen(fd, "rb")
        if not _unchanged(os.fstat(file.fileno()), row):
            file.close()
            raise _changed(row)
        return file

    def _servable(self, catalog: Catalog, photo: int) -> Row:
        """The catalog row of ``photo`` when its file is a regular file (not a symlink) of the catalogued size and
        modification time; anything else is "not found"."""
        row = catalog.rows_for([photo]).get(photo)
        if row is None:
            raise NotFound(f"no photo {photo} in the catalog")
        try:
            st = os.lstat(row.path)
        except OSError as exc:
            raise NotFound(f"photo {photo} is gone from disk") from exc
        if not _unchanged(st, row):
            raise _changed(row)
        return row

    # ---- the catalog and its index ---------------------------------------------------------------------------------
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
        """Open the catalog and load its index now (before the first query; a missing catalog is not an error)."""
        try:
            self._current_ann(self._open())
        except Unavailable as exc:
            log.info("%s", exc)

    def close(self) -> None:
        """Close the catalog."""
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


def _unchanged(st: os.stat_result, row: Row) -> bool:
    """A regular file (not a symlink, FIFO or device) of the catalogued size and modification time."""
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (row.size, row.mtime_ns)


def _changed(row: Row) -> NotFound:
    return NotFound(f"photo {row.id} changed on disk since it was indexed; run p2w index again")


def start(
    load: Callable[[], Engine], settings: Settings, limits: Limits | None = None
) -> tuple[Service, ThreadPoolExecutor]:
    """A ``Service`` over the engine ``load()`` returns (e.g. ``lambda: p2w.load(mapper="default")``) and the one
    thread it belongs to: ``load`` runs there, and every call of the Service must run there too
    (``worker.submit(service.search, query)``). An error of ``load`` is raised here.

    Why the engine is loaded on that thread: PyTorch runs its CPU kernels on OpenMP threads, and libgomp gives every
    thread that starts parallel work a team of its own; once a process holds more OpenMP threads than the machine
    has CPUs, libgomp spins 100 times instead of 300,000 before a waiting thread sleeps (GCC's manual,
    ``GOMP_SPINCOUNT``), and kernels then pay for wake-ups. A model loaded on one thread and queried on another is
    exactly that: ViT-B-32's text tower took 28-30 ms a query so on 2 CPUs, against 20-21 ms when one thread does both
    (docs/performance.md, "p2w serve").
    """
    worker = engine_thread()
    try:
        service = worker.submit(lambda: Service(load(), settings, limits)).result()
    except BaseException:
        worker.shutdown(wait=False, cancel_futures=True)
        raise
    return service, worker


def engine_thread() -> ThreadPoolExecutor:
    """A single-thread executor for a Service's calls (``start`` makes one and loads the engine on it)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2w-engine")
