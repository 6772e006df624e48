"""Training images from webdataset shards, cached as files' are (``p2w.core.features``).

Each member is hashed by its bytes, the digest a file's content gets, so a member and a file holding the same bytes
share one cached feature. The features the cache lacks are computed in a second streaming pass over the shards that
hold them, a shard at a time; a shard is never unpacked nor held whole in memory. Under torchrun each rank reads its
share of the shards in both passes, and every rank learns the whole list (in shard order) from the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p2w.core.backbone import Backbone
from p2w.core.features import FeatureCache, ImageSet, ViewDataset, Views, encode_views, view_dataset
from p2w.core.images import decode_image
from p2w.core.sources import Part, Problems, Sample, read
from p2w.errors import ImageError
from p2w.progress import Progress
from p2w.training.data import problem_rows
from p2w.training.distributed import Dist

CHANGED = "changed in its shard since it was hashed; run again"
GONE = "no longer in its shard (the shard changed since it was hashed); run again"


@dataclass(frozen=True)
class Member:
    """Where a training row's image is: the shard (its position in the list of shards) and the sample's place in it."""

    shard: int
    index: int


def member_name(shard: Part, key: str) -> Path:
    """How a member is named in messages, e.g. ``/data/00003.tar/000030017``."""
    return Path(shard.source) / key


def hash_shards(shards: Sequence[Part], d: Dist) -> tuple[ImageSet, list[Member]]:
    """Every member's name and content hash, in shard order, and where each is; what the shards hold that is bad
    (a key without an image, a shard cut short) goes to ``skipped``. Each rank reads its share of the shards."""
    mine = [(i, *_hash_shard(shards[i])) for i in range(d.rank, len(shards), d.world)]
    done = sorted((one for share in d.gather(mine) for one in share), key=lambda one: one[0])
    images, where = ImageSet([], []), []
    for i, rows, problems in done:
        for index, key, digest in rows:
            images.paths.append(member_name(shards[i], key))
            images.hashes.append(digest)
            where.append(Member(i, index))
        images.skipped.extend(problem_rows(problems))
    return images, where


def _hash_shard(shard: Part) -> tuple[list[tuple[int, str, str]], Problems]:
    problems = Problems()
    rows = [(index, s.key, _digest(s)) for index, s in enumerate(read(shard, problems))]
    return rows, problems


def _digest(sample: Sample) -> str:
    assert sample.data is not None, "a shard's sample holds its image's bytes"
    return hashlib.sha256(sample.data).hexdigest()


Wanted = dict[int, dict[int, list[tuple[int, int]]]]  # shard -> sample index -> the (row, view) items it gives


class ShardViews(torch.utils.data.IterableDataset[Any]):
    """``(row, view, pixels or None, reason)`` for the wanted members of some shards, each shard read as one stream;
    DataLoader workers share the wanted members of a shard one by one. A member whose bytes no longer have the hash
    of the first pass gives ``None``."""

    def __init__(self, shards: Sequence[Part], wanted: Wanted, views: ViewDataset) -> None:
        self.shards, self.wanted, self.views = shards, wanted, views
        self.total = sum(len(items) for members in wanted.values() for items in members.values())

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor | None, str]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        seen = 0
        for shard, members in sorted(self.wanted.items()):
            for index, sample in enumerate(read(self.shards[shard], Problems())):
                items = members.get(index)
                if items is not None:
                    seen += 1
                    if (seen - 1) % workers == worker:
                        yield from self._items(sample, items)

    def _items(self, sample: Sample, items: list[tuple[int, int]]) -> Iterator[tuple[int, int, Any, str]]:
        if _digest(sample) != self.views.images.hashes[items[0][0]]:
            yield from ((row, view, None, f"{sample.key}: {CHANGED}") for row, view in items)
            return
        assert sample.data is not None
        try:
            image = decode_image(sample.data, sample.key)
        except ImageError as exc:
            yield from ((row, view, None, str(exc)) for row, view in items)
            return
        for row, view in items:
            yield row, view, self.views.pixels(image, row, view), ""


def store_shard_views(
    backbone: Backbone,
    images: ImageSet,
    where: Sequence[Member | None],
    shards: Sequence[Part],
    items: Sequence[tuple[int, int]],
    views: Views,
    cache: FeatureCache,
    d: Dist,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[int, str]:
    """Encode the (row, view) ``items`` of shard members and store their features in ``cache``; this rank takes its
    share of the shards that hold them. Returns why rows failed (by row)."""
    wanted: Wanted = {}
    for row, view in items:
        member = where[row]
        assert member is not None, "a row of a file is encoded by store_views"
        wanted.setdefault(member.shard, {}).setdefault(member.index, []).append((row, view))
    mine = {shard: wanted[shard] for shard in sorted(wanted)[d.rank :: d.world]}
    if not mine:
        return {}
    dataset = ShardViews(shards, mine, view_dataset(backbone, images, [], views))
    done, failed = encode_views(backbone, dataset, batch_size, workers, progress)
    cache.put([(images.hashes[r], v, f.numpy()) for (r, v), f in done.items()], views.kind)
    reasons = dict(failed)
    for members in mine.values():
        for row, view in (item for found in members.values() for item in found):
            if (row, view) not in done and row not in reasons:
                reasons[row] = f"{images.paths[row]}: {GONE}"
    return reasons
