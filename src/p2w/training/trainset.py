"""The training set as features: cached (computed once, shared by ranks) or live (encoded at every step)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from p2w.core import layout
from p2w.core.backbone import Backbone
from p2w.core.features import FeatureCache, ImageSet, Views, hash_files, missing_views, store_views, view_dataset
from p2w.core.images import open_image
from p2w.core.sources import Part
from p2w.errors import ImageError, P2WError
from p2w.mappers.network import TokenMapper
from p2w.progress import Progress
from p2w.training.data import TrainingData
from p2w.training.distributed import Dist
from p2w.training.objective import photo_of_star_features
from p2w.training.shard_set import Member, hash_shards, store_shard_views


class FeatureSource(Protocol):
    """Image features of (row, view) pairs."""

    views_per_image: int

    def get(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Features ``(len(rows), embed_dim)`` float32."""
        ...


class CachedSource:
    """Every feature in one tensor ``(n, views, embed_dim)``, on the GPU when it fits comfortably."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.views_per_image = table.shape[1]

    def get(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Rows of the table (a gather, no image is read)."""
        return self.table[rows.to(self.table.device), views.to(self.table.device)]


class LiveSource:
    """The reference's way: decode, transform and encode the images at every step (``--no-cache``)."""

    def __init__(self, backbone: Backbone, images: ImageSet, views: Views) -> None:
        self.backbone, self.views_per_image = backbone, views.per_image
        self.dataset = view_dataset(backbone, images, [], views)

    def get(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Encode the (row, view) images now."""
        pixels = [
            self.dataset.pixels(open_image(self.dataset.images.paths[r]), r, v)
            for r, v in zip(rows.tolist(), views.tolist(), strict=True)
        ]
        with torch.no_grad():
            return self.backbone.encode_image(torch.stack(pixels))


def load_features(
    backbone: Backbone,
    data: TrainingData,
    home: Path,
    d: Dist,
    views: int = 1,
    cache: bool = True,
    workers: int | None = None,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> tuple[FeatureSource, ImageSet]:
    """Hash the images (files, then shard members), encode what the cache in ``home`` lacks (split over ranks;
    ``cache=False``: encode at every step instead, files only), and return the readable, distinct images.
    ``views``: cached random crops per image (0: none)."""
    if data.shards and not cache:
        raise P2WError("--no-cache decodes every image at every step, which needs files; webdataset shards are read "
                       "as streams: train on them with the feature cache (leave out --no-cache)")  # fmt: skip
    kinds = Views(views)
    store = FeatureCache.for_backbone(home, backbone.id) if cache else None
    try:
        images = _hashed(data.files, store, workers, d)
        where: list[Member | None] = [None] * len(images.hashes)
        if data.shards:
            members, found = hash_shards(data.shards, d)
            images = ImageSet(images.paths + members.paths, images.hashes + members.hashes,
                              images.skipped + members.skipped)  # fmt: skip
            where += found
        images.skipped[:0] = data.skipped
        images, rows = _distinct(images)
        _check_same_files(images, d)
        if store is None:
            source, kept = _live(backbone, images, kinds)
            _check_same_files(kept, d)
            return source, kept
        job = _Job(backbone, kinds, store, [where[r] for r in rows], data.shards, max(8, batch_size), workers, progress)
        return _cached(images, job, d)
    finally:
        if store is not None:
            store.close()


def _hashed(files: Sequence[Path], store: FeatureCache | None, workers: int | None, d: Dist) -> ImageSet:
    """The files' hashes: rank 0 hashes (and caches) them, then the others read them from the cache."""
    if d.is_main or store is None:
        images = hash_files(files, store, workers)
    d.barrier()
    if not d.is_main and store is not None:
        images = hash_files(files, store, workers)  # all known now: no file is read
    return images


def _distinct(images: ImageSet) -> tuple[ImageSet, list[int]]:
    """One row per content (copies of a file would be each other's negatives), and the rows kept."""
    first: dict[str, int] = {}
    skipped = list(images.skipped)
    for row, (path, digest) in enumerate(zip(images.paths, images.hashes, strict=True)):
        if digest in first:
            skipped.append((str(path), f"same content as {images.paths[first[digest]]}"))
        else:
            first[digest] = row
    rows = list(first.values())
    return ImageSet([images.paths[r] for r in rows], list(first), skipped), rows


def _live(backbone: Backbone, images: ImageSet, views: Views) -> tuple[FeatureSource, ImageSet]:
    ok, skipped = [], list(images.skipped)
    for row, path in enumerate(images.paths):
        try:
            open_image(path)
            ok.append(row)
        except ImageError as exc:
            skipped.append((str(path), str(exc)))
    kept = ImageSet([images.paths[r] for r in ok], [images.hashes[r] for r in ok], skipped)
    return LiveSource(backbone, kept, views), kept


def _check_same_files(images: ImageSet, d: Dist) -> None:
    """Every rank must index the same images by the same rows; a file changed while the ranks hashed it is an
    error on every rank (not a silent mismatch of rows)."""
    if d.world == 1:
        return
    digest = hashlib.sha256("\n".join(images.hashes).encode()).hexdigest()
    if len(set(d.gather(digest))) > 1:
        raise P2WError("the ranks found different training images (files changed while the run started); run again")


@dataclass(frozen=True)
class _Job:
    """What a cached pass needs besides the images: where each row's image is (None: its path is a file)."""

    backbone: Backbone
    views: Views
    cache: FeatureCache
    where: list[Member | None]
    shards: list[Part]
    batch_size: int
    workers: int | None
    progress: Progress | None


def _cached(images: ImageSet, job: _Job, d: Dist) -> tuple[FeatureSource, ImageSet]:
    """Rank 0 lists what the cache lacks, every rank encodes its share of that one list (files by item, shards by
    shard), and the failures of all ranks are known to all: a row is kept unless some rank failed to read it."""
    todo = d.broadcast(missing_views(images, job.views, job.cache) if d.is_main else None)
    assert todo is not None
    files = [item for item in todo if job.where[item[0]] is None]
    members = [item for item in todo if job.where[item[0]] is not None]
    failed = store_views(job.backbone, images, files[d.rank :: d.world], job.views, job.cache, job.batch_size,
                         job.workers, job.progress)  # fmt: skip
    failed |= store_shard_views(job.backbone, images, job.where, job.shards, members, job.views, job.cache, d,
                                job.batch_size, job.workers, job.progress)  # fmt: skip
    reasons = {row: why for part in d.gather(failed) for row, why in part.items()}  # every rank has stored its share
    ok = [r for r in range(len(images.hashes)) if r not in reasons]
    skipped = list(images.skipped) + [(str(images.paths[r]), why) for r, why in sorted(reasons.items())]
    table = _table(job.backbone, [images.hashes[r] for r in ok], job.views, job.cache)
    kept = ImageSet([images.paths[r] for r in ok], [images.hashes[r] for r in ok], skipped)
    return CachedSource(table), kept


def _table(backbone: Backbone, hashes: list[str], views: Views, cache: FeatureCache) -> torch.Tensor:
    """The features of ``hashes`` from ``cache``, ``(n, views, embed_dim)`` float32, on the GPU when it fits."""
    keys = [(h, v) for h in hashes for v in range(views.per_image)]
    have = cache.get(keys, views.kind)
    lost = len(keys) - len(have)
    if lost:
        raise P2WError(f"{lost} image feature(s) are missing from {cache.path} after they were computed; run again")
    if not keys:
        return torch.zeros(0, views.per_image, backbone.embed_dim)
    table = torch.from_numpy(np.stack([have[k] for k in keys])).reshape(len(hashes), views.per_image, -1)
    device = backbone.placement.device
    if device.type == "cuda" and table.numel() * 4 < 0.25 * torch.cuda.mem_get_info(device)[0]:
        table = table.to(device)
    return table


class LayoutSource:
    """Image features from a layout of ``p2w embed dataset``: its unit vectors times their ``norm``, memory-mapped,
    so a batch reads only its own rows (a rank reads its share; nothing is loaded whole)."""

    views_per_image = 1

    def __init__(self, files: list[np.ndarray], starts: np.ndarray, rows: np.ndarray, norms: np.ndarray, device: Any):
        self.files, self.starts = files, starts  # per file: its memory map and its first global row
        self.rows, self.norms, self.device = rows, norms, device  # per kept row: its global row and its norm

    def get(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Features ``(len(rows), embed_dim)`` float32 of kept rows ``rows`` (one view each)."""
        picked = rows.cpu().numpy()
        wanted = self.rows[picked]
        which = np.searchsorted(self.starts, wanted, side="right") - 1
        out = np.empty((len(wanted), self.files[0].shape[1]), dtype=np.float32)
        for f in np.unique(which):
            at = which == f
            out[at] = self.files[f][wanted[at] - self.starts[f]]
        out *= self.norms[picked][:, None]
        return torch.from_numpy(out).to(self.device)


def layout_features(folder: Path, backbone: Backbone) -> tuple[FeatureSource, ImageSet]:
    """The training images of a layout: one row per content (the first of copies, by ``hash``), in linear time;
    a layout of another backbone, or without ``norm`` (written by another tool), is refused."""
    manifest = layout.Manifest.read(folder)
    if manifest is not None and manifest.backbone != backbone.id:
        raise P2WError(f"{folder} holds embeddings of {manifest.backbone}, not {backbone.id}; pass its --model")
    files = layout.vector_files(folder)
    maps = [np.load(f, mmap_mode="r") for f in files]
    if maps[0].shape[1] != backbone.embed_dim:
        raise P2WError(f"{folder} holds {maps[0].shape[1]}-d vectors; {backbone.id} makes {backbone.embed_dim}-d")
    starts = np.cumsum([0] + [len(m) for m in maps[:-1]]).astype(np.int64)
    first: dict[str, int] = {}
    norms: list[float] = []
    skipped: list[tuple[str, str]] = []
    for f, start in zip(files, starts, strict=True):
        cols = layout.read_columns(f, ["image_path", "norm", "hash"])
        if any(n is None for n in cols["norm"]):
            raise P2WError(f"{layout.metadata_file(f)} has no norm: mappers take the features before normalising; "
                           "make the layout with: p2w embed dataset SOURCE --out DIR")  # fmt: skip
        for i, (path, norm, digest) in enumerate(zip(cols["image_path"], cols["norm"], cols["hash"], strict=True)):
            key = digest or f"row-{start + i}"
            if key in first:
                skipped.append((str(path), "same content as an earlier row"))
                continue
            first[key] = int(start + i)
            norms.append(float(norm))
    source = LayoutSource(maps, starts, np.fromiter(first.values(), dtype=np.int64, count=len(first)),
                          np.asarray(norms, dtype=np.float32), backbone.placement.device)  # fmt: skip
    return source, ImageSet([], list(first), skipped)


def split_rows(hashes: Sequence[str], fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic held-out split by content (the same images stay held out across runs and machines)."""
    n = len(hashes)
    n_val = round(n * fraction)
    if n_val < 2 or n - n_val < 2:
        n_val = 0
    order = sorted(range(n), key=lambda r: hashlib.sha256(f"{seed}:{hashes[r]}".encode()).hexdigest())
    val = torch.tensor(sorted(order[:n_val]), dtype=torch.long)
    train = torch.tensor(sorted(order[n_val:]), dtype=torch.long)
    return train, val


def val_recall(backbone: Backbone, mapper: TokenMapper, feats: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """Image -> "a photo of *" retrieval over the held-out set: recall@1 and @5 (fractions)."""
    feats = feats.to(backbone.placement.device)
    with torch.no_grad():
        texts = torch.cat(
            [photo_of_star_features(backbone, mapper(feats[i : i + chunk])) for i in range(0, len(feats), chunk)]
        )
        img, txt = F.normalize(feats, dim=-1), F.normalize(texts, dim=-1)
        ranks = []
        for i in range(0, len(img), chunk):
            sims = img[i : i + chunk] @ txt.T  # (chunk, n)
            own = sims[torch.arange(sims.shape[0]), torch.arange(i, i + sims.shape[0])]
            ranks.append((sims > own[:, None]).sum(dim=1))
        rank = torch.cat(ranks)
    return float((rank < 1).float().mean()), float((rank < 5).float().mean())
