"""Image features for training, computed once: an on-disk cache keyed by backbone and file content.

CLIP is frozen while a mapper trains, so each image's features never change. They are computed in one pass
(DataLoader workers decode, the model encodes in batches) and kept in ``P2W_HOME/features/<backbone>.sqlite``:
``files`` maps (path, size, mtime) to a content hash, ``features`` maps (hash, view kind, view) to a float32 vector.
A moved or copied file costs nothing; a re-run reads no image. Paths are stored as their exact bytes
(``p2w.fspath.to_db``), so a name that is not UTF-8 works; a file written by an older p2w (TEXT paths) is upgraded
once when it is opened (``PRAGMA user_version``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from p2w import fspath
from p2w.core.backbone import Backbone
from p2w.core.devices import default_workers
from p2w.core.images import open_image, target_pad
from p2w.digest import sha256_many
from p2w.errors import ImageError
from p2w.progress import Progress
from p2w.spec import safe_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Views:
    """Which views of each image are used: ``count == 0`` is the plain eval transform, ``count == K`` gives K
    random-resized crops (scale 0.9-1.0, as the reference trains), each seeded by the file's content and view index."""

    count: int = 1
    pad: float = 0.0  # with count 0: SEARLE's target padding at this ratio first (``core.images.target_pad``)

    @property
    def kind(self) -> str:
        """Cache key of the transform, e.g. ``"eval"``, ``"eval-targetpad1.25"`` or ``"rrc0.9"``."""
        if self.count:
            return "rrc0.9"
        return f"eval-targetpad{self.pad:g}" if self.pad else "eval"

    @property
    def per_image(self) -> int:
        """How many vectors each image has."""
        return max(1, self.count)


SCHEMA_VERSION = 1  # 1: ``files.path`` holds the path's exact bytes (a BLOB, ``p2w.fspath.to_db``)
CHUNK = 900  # bound parameters per look-up statement (SQLite allows 999 before 3.32)


class FeatureCache:
    """SQLite store of content hashes and feature vectors, safe for several processes (WAL, waits on locks).

    Look-ups go by key (the primary keys' indexes), so their cost follows the keys asked for, not the table's size.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.con = sqlite3.connect(path, timeout=300)
        self.con.execute("PRAGMA journal_mode=WAL")
        if self.con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._upgrade()

    def _upgrade(self) -> None:
        """Create the tables, or turn an older file's TEXT paths into BLOBs: once, in one transaction that checks
        the version again (another process may have upgraded the file while this one waited for the lock)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            if self.con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self.con.execute(
                    "CREATE TABLE IF NOT EXISTS files (path BLOB PRIMARY KEY, size INT, mtime_ns INT, hash TEXT)"
                )
                self.con.execute(
                    "CREATE TABLE IF NOT EXISTS features (hash TEXT, kind TEXT, view INT, vec BLOB,"
                    " PRIMARY KEY (hash, kind, view))"
                )
                self.con.execute("UPDATE OR REPLACE files SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text'")
                self.con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    @classmethod
    def for_backbone(cls, home: Path, backbone_id: str) -> FeatureCache:
        """The cache file of one backbone: vectors of different models never mix."""
        return cls(home / "features" / (safe_name(backbone_id) + ".sqlite"))

    def _where_in(self, sql: str, first: tuple[Any, ...], values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` (ending in ``IN ({})``) for ``values``, a statement per chunk of them."""
        for lo in range(0, len(values), CHUNK):
            chunk = values[lo : lo + CHUNK]
            yield from self.con.execute(sql.format(",".join("?" * len(chunk))), (*first, *chunk))

    def known_hashes(self, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        """Hashes of files whose (size, mtime) are unchanged since they were hashed."""
        out = {}
        sql = "SELECT path, size, mtime_ns, hash FROM files WHERE path IN ({})"
        for stored, size, mtime, digest in self._where_in(sql, (), [fspath.to_db(p) for p in stats]):
            path = fspath.from_db(stored)
            if stats.get(path) == (size, mtime):
                out[path] = digest
        return out

    def add_hashes(self, rows: list[tuple[str, int, int, str]]) -> None:
        """Remember (path, size, mtime_ns, hash) rows."""
        with self.con:
            self.con.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                [(fspath.to_db(path), size, mtime, digest) for path, size, mtime, digest in rows],
            )

    def get(self, keys: Sequence[tuple[str, int]], kind: str) -> dict[tuple[str, int], np.ndarray]:
        """Stored vectors for (hash, view) keys; missing keys are absent from the result."""
        views: dict[str, set[int]] = {}
        for digest, view in keys:
            views.setdefault(digest, set()).add(view)
        out: dict[tuple[str, int], np.ndarray] = {}
        sql = "SELECT hash, view, vec FROM features WHERE kind = ? AND hash IN ({})"
        for digest, view, blob in self._where_in(sql, (kind,), list(views)):
            if view in views[digest]:
                out[(digest, view)] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put(self, rows: list[tuple[str, int, np.ndarray]], kind: str) -> None:
        """Store (hash, view, vector) rows, one transaction."""
        with self.con:
            self.con.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                [(d, kind, v, np.asarray(vec, dtype=np.float32).tobytes()) for d, v, vec in rows],
            )

    def close(self) -> None:
        """Close the connection."""
        self.con.close()


@dataclass
class ImageSet:
    """Readable training images: paths, content hashes, and what was skipped (path, reason)."""

    paths: list[Path]
    hashes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def hash_files(paths: Sequence[Path], cache: FeatureCache | None, workers: int | None = None) -> ImageSet:
    """Content hashes of ``paths`` (unchanged files from the cache, others read in ``workers`` threads; None: the
    digest module's default, since these are I/O threads, not decoders); unreadable ones skipped."""
    stats: dict[str, tuple[int, int]] = {}
    skipped = []
    for p in paths:
        try:
            st = p.stat()
            stats[str(p)] = (st.st_size, st.st_mtime_ns)
        except OSError as exc:
            skipped.append((str(p), exc.strerror or str(exc)))
    known = cache.known_hashes(stats) if cache else {}
    todo = [p for p in stats if p not in known]
    fresh = sha256_many(todo) if workers is None else sha256_many(todo, workers)
    if cache:
        cache.add_hashes([(p, *stats[p], d) for p, d in fresh.items() if d])
    digests = {**known, **fresh}
    ok = [p for p in stats if digests.get(p)]
    skipped += [(p, "cannot be read") for p in stats if not digests.get(p)]
    return ImageSet([Path(p) for p in ok], [str(digests[p]) for p in ok], skipped)


class ViewDataset(torch.utils.data.Dataset[Any]):
    """(row, view) items -> (row, view, pixels) with the view's seeded transform; unreadable images give ``None``."""

    def __init__(self, images: ImageSet, items: list[tuple[int, int]], views: Views, train_tf: Any, eval_tf: Any):
        self.images, self.items, self.views = images, items, views
        self.train_tf, self.eval_tf = train_tf, eval_tf

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, int, torch.Tensor | None, str]:
        row, view = self.items[k]
        try:
            image = open_image(self.images.paths[row])
        except ImageError as exc:
            return row, view, None, str(exc)
        return row, view, self.pixels(image, row, view), ""

    def pixels(self, image: Image.Image, row: int, view: int) -> torch.Tensor:
        """The view's pixels ``(3, H, W)``: eval transform, or a crop seeded by (content hash, view)."""
        if self.views.count == 0:
            return self.eval_tf(target_pad(image, self.views.pad) if self.views.pad else image)
        state = torch.get_rng_state()
        torch.manual_seed(int(self.images.hashes[row][:15], 16) + view)
        try:
            return self.train_tf(image)
        finally:
            torch.set_rng_state(state)


def as_given(batch: Any) -> Any:
    """A DataLoader ``collate_fn`` that keeps a batch (or an item) as it is."""
    return batch


def view_dataset(backbone: Backbone, images: ImageSet, items: list[tuple[int, int]], views: Views) -> ViewDataset:
    """Dataset of (row, view) items with the backbone's train/eval transforms."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    train_tf = image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(backbone.model)), is_train=True)
    return ViewDataset(images, items, views, train_tf, backbone.preprocess)


class FileDataset(torch.utils.data.Dataset[Any]):
    """Paths -> (index, pixels, "") or (index, None, reason), with the eval transform (JPEGs decoded in draft mode)."""

    def __init__(self, paths: Sequence[str], transform: Any, draft: int | None) -> None:
        self.paths, self.transform, self.draft = paths, transform, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(open_image(self.paths[i], draft=self.draft)), ""
        except ImageError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decoder bug on a hostile file must not stop a library scan
            return i, None, f"{self.paths[i]} cannot be decoded ({type(exc).__name__}: {exc})"


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_init(parent: int, _worker_id: int) -> None:
    """A DataLoader worker's start: it stops with its parent process (``kill -9``, OOM), not seconds later.

    On Linux the kernel kills it when the parent thread that started it ends (``PR_SET_PDEATHSIG``); on other POSIX
    systems a thread notices it was re-parented. (Torch's own check runs every 5 s.) No-op on Windows.
    """
    if os.name != "posix":
        return
    if not _die_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="p2w-parent-watch").start()
    if os.getppid() != parent:  # the parent died before this worker got here
        os._exit(1)


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every: float = 0.1) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def iter_encoded(
    backbone: Backbone, dataset: torch.utils.data.Dataset[Any], batch_size: int = 64, workers: int | None = None
) -> Iterator[list[tuple[Any, torch.Tensor | None, str]]]:
    """Batches of (key, features (embed_dim,) float32 on CPU, "") or (key, None, reason), as the items decode.

    Decoding and preprocessing run in ``workers`` processes, overlapped with the model (None: ``default_workers`` of
    the model's device; 0: in this process); pinned memory on CUDA.
    The workers stop as soon as this process dies. Items are ``(key, pixels_or_None, reason)`` or
    ``(row, view, pixels_or_None, reason)`` (keyed by (row, view)).
    """
    if workers is None:  # the one place where the default number of decoders is chosen
        workers = default_workers(backbone.placement.device)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=functools.partial(worker_init, os.getpid()) if workers else None,
        collate_fn=as_given,
        pin_memory=backbone.placement.device.type == "cuda",
        persistent_workers=False,
    )
    for batch in loader:
        items = [((it[0], it[1]), it[2], it[3]) if len(it) == 4 else (it[0], it[1], it[2]) for it in batch]
        good = [(key, px) for key, px, _ in items if px is not None]
        out: list[tuple[Any, torch.Tensor | None, str]] = [(key, None, why) for key, px, why in items if px is None]
        if good:
            with torch.inference_mode():
                feats = backbone.encode_image(torch.stack([px for _, px in good])).cpu()
            out += [(key, f, "") for (key, _), f in zip(good, feats, strict=True)]
        yield out


def encode_views(
    backbone: Backbone,
    dataset: torch.utils.data.Dataset[Any],
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[tuple[int, int], torch.Tensor], list[tuple[int, str]]]:
    """Encode every ``(row, view, pixels or None, reason)`` item of ``dataset`` (a ``ViewDataset``, or another with a
    length that gives such items): {(row, view): features (embed_dim,) float32 on CPU}, and failures."""
    out: dict[tuple[int, int], torch.Tensor] = {}
    failed: list[tuple[int, str]] = []
    done = 0
    for batch in iter_encoded(backbone, dataset, batch_size, workers):
        for key, feat, why in batch:
            if feat is None:
                failed.append((key[0], why))
            else:
                out[key] = feat
        done += len(batch)
        if progress:
            progress("features", done, len(dataset))  # type: ignore[arg-type]
    return out, failed


def missing_views(images: ImageSet, views: Views, cache: FeatureCache) -> list[tuple[int, int]]:
    """The (row, view) items whose features ``cache`` lacks, in row order: what a pass has to encode. Under torchrun
    one rank decides this and the others take its list (a rank reading later would see the first one's work)."""
    have = cache.get([(h, v) for h in images.hashes for v in range(views.per_image)], views.kind)
    return [(r, v) for r, h in enumerate(images.hashes) for v in range(views.per_image) if (h, v) not in have]


def store_views(
    backbone: Backbone,
    images: ImageSet,
    items: Sequence[tuple[int, int]],
    views: Views,
    cache: FeatureCache,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[int, str]:
    """Encode the (row, view) ``items`` and store their features in ``cache``; returns why rows failed (by row)."""
    if not items:
        return {}
    ds = view_dataset(backbone, images, list(items), views)
    done, failed = encode_views(backbone, ds, batch_size, workers, progress)
    cache.put([(images.hashes[r], v, f.numpy()) for (r, v), f in done.items()], views.kind)
    return dict(failed)


def fill_cache(
    backbone: Backbone,
    images: ImageSet,
    views: Views,
    cache: FeatureCache,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[int, str]:
    """Encode the (row, view) features ``cache`` lacks and store them, in this one process; returns why rows failed
    (by row). (Several processes split the work with ``missing_views`` and ``store_views``.)"""
    todo = missing_views(images, views, cache)
    return store_views(backbone, images, todo, views, cache, batch_size, workers, progress)
