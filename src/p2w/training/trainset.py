"""The training set as features: cached (computed once, shared by ranks) or live (encoded at every step)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from p2w.core.backbone import Backbone
from p2w.core.features import FeatureCache, ImageSet, Views, fill_cache, hash_files, view_dataset
from p2w.core.images import open_image
from p2w.errors import ImageError
from p2w.mappers.network import TokenMapper
from p2w.progress import Progress
from p2w.training.distributed import Dist
from p2w.training.objective import photo_of_star_features


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
    files: Sequence[Path],
    home: Path,
    d: Dist,
    views: int = 1,
    cache: bool = True,
    workers: int | None = None,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> tuple[FeatureSource, ImageSet]:
    """Hash the files, encode what the cache in ``home`` lacks (split over ranks; ``cache=False``: encode at every
    step instead), and return the readable, distinct images. ``views``: cached random crops per image (0: none)."""
    kinds = Views(views)
    store = FeatureCache.for_backbone(home, backbone.id) if cache else None
    try:
        if d.is_main or store is None:
            images = hash_files(files, store, workers)
        d.barrier()
        if not d.is_main and store is not None:
            images = hash_files(files, store, workers)  # all known now: no file is read
        images = _distinct(images)
        if store is None:
            return _live(backbone, images, kinds)
        return _cached(backbone, images, kinds, store, max(8, batch_size), workers, d, progress)
    finally:
        if store is not None:
            store.close()


def _distinct(images: ImageSet) -> ImageSet:
    """One row per content: copies of a file would be each other's negatives."""
    first: dict[str, Path] = {}
    skipped = list(images.skipped)
    for path, digest in zip(images.paths, images.hashes, strict=True):
        if digest in first:
            skipped.append((str(path), f"same content as {first[digest]}"))
        else:
            first[digest] = path
    return ImageSet(list(first.values()), list(first), skipped)


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


def _cached(
    backbone: Backbone,
    images: ImageSet,
    views: Views,
    cache: FeatureCache,
    batch_size: int,
    workers: int | None,
    d: Dist,
    progress: Progress | None,
) -> tuple[FeatureSource, ImageSet]:
    reasons = fill_cache(backbone, images, views, cache, batch_size, workers, progress, (d.rank, d.world))
    d.barrier()
    have = cache.get([(h, v) for h in images.hashes for v in range(views.per_image)], views.kind)
    ok = [r for r, h in enumerate(images.hashes) if all((h, v) in have for v in range(views.per_image))]
    skipped = list(images.skipped) + [
        (str(images.paths[r]), reasons.get(r, "cannot be decoded"))
        for r in range(len(images.hashes))
        if r not in set(ok)
    ]
    table = (
        torch.stack(
            [
                torch.stack([torch.from_numpy(have[(images.hashes[r], v)].copy()) for v in range(views.per_image)])
                for r in ok
            ]
        )
        if ok
        else torch.zeros(0, views.per_image, backbone.embed_dim)
    )
    device = backbone.placement.device
    if device.type == "cuda" and table.numel() * 4 < 0.25 * torch.cuda.mem_get_info(device)[0]:
        table = table.to(device)
    kept = ImageSet([images.paths[r] for r in ok], [images.hashes[r] for r in ok], skipped)
    return CachedSource(table), kept


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
