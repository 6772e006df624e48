"""``duplicates``: groups of near-identical photos in a catalog, from the vectors it holds (no image is opened).

Each photo's ``NEIGHBOURS`` nearest in the catalog's ANN (one batch of queries, on the graph as it is: full or
reduced), each such pair scored exactly, the pairs at or above the threshold joined into groups (connected
components), largest first. In a group the first photo is the largest file (the original, usually), and every
photo's similarity is its cosine with that one. Nothing on disk is moved or deleted: this only reports.

The default threshold is measured (docs/photos.md, "Near-duplicates"): generated near-duplicates (JPEG quality 60,
half size, 5% cropped, turned 3 degrees) against distinct photos of the same subject.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2w import fspath
from p2w.core.dates import Where
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog
from p2w.progress import Progress

THRESHOLD = 0.96  # cosine at or above which two photos are near-duplicates (measured: docs/photos.md)
NEIGHBOURS = 16  # neighbours looked at per photo: a group larger than this is still found, through its links
EF = 24  # the graph's search breadth for them: a near-duplicate is among the very nearest (docs/performance.md)
CHUNK = 1024  # photos queried at a time (their neighbours' vectors gathered: CHUNK x NEIGHBOURS x dim floats)


@dataclass(frozen=True)
class Copy:
    """A photo of a group: its path, its cosine with the group's first photo, its size and catalog id."""

    path: str
    similarity: float
    size: int
    id: int


@dataclass(frozen=True)
class Group:
    """Near-identical photos, the largest file first."""

    photos: list[Copy]

    def to_json(self) -> dict[str, Any]:
        """``{"photos": [{"path", "similarity", "size"}, ...]}`` (``path_bytes`` for a name that is not UTF-8)."""
        return {
            "photos": [{**fspath.to_json(p.path), "similarity": round(p.similarity, 4), "size": p.size}
                       for p in self.photos]
        }  # fmt: skip


def duplicates(
    catalog: Catalog,
    threshold: float = THRESHOLD,
    where: Where | None = None,
    ann: ann_mod.Ann | None = None,
    progress: Progress | None = None,
) -> list[Group]:
    """The groups of near-identical photos among those that pass ``where`` (all: None), largest group first; files
    gone from disk and videos' frames are left out. Holds the photos' vectors in memory (4 bytes a dimension a
    photo)."""
    ids = catalog.ids_where(where or Where(), photos=True)
    if len(ids) < 2:
        return []
    order, vectors = ann_mod.matrix(catalog.vectors_for(ids))
    index = ann or ann_mod.load(catalog)
    sorter = np.argsort(order)
    parent = np.arange(len(order))
    for start in range(0, len(order), CHUNK):
        block = vectors[start : start + CHUNK]
        found = _rows(index.neighbours(block, min(NEIGHBOURS + 1, index.live), EF), order, sorter)  # (n, k); -1: none
        mine = np.arange(start, start + len(block))[:, None]
        found[found == mine] = -1
        scores = np.einsum("nkd,nd->nk", vectors[np.maximum(found, 0)], block)
        near = (found >= 0) & (scores >= threshold)
        for a, b in zip(np.broadcast_to(mine, found.shape)[near], found[near], strict=True):
            _join(parent, int(a), int(b))
        if progress:
            progress("comparing", min(start + CHUNK, len(order)), len(order))
    return _groups(catalog, parent, order, vectors)


def _rows(labels: np.ndarray, order: np.ndarray, sorter: np.ndarray) -> np.ndarray:
    """The rows of ``order`` (catalog ids) holding ``labels``; -1 for an id not among them (outside ``--in``)."""
    sorted_ids = order[sorter]
    at = np.clip(np.searchsorted(sorted_ids, labels), 0, len(order) - 1)
    return np.where(sorted_ids[at] == labels, sorter[at], -1)


def _join(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _root(parent, a), _root(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _root(parent: np.ndarray, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = int(parent[a])
    return a


def _groups(catalog: Catalog, parent: np.ndarray, order: np.ndarray, vectors: np.ndarray) -> list[Group]:
    members: dict[int, list[int]] = {}
    for r in range(len(order)):
        members.setdefault(_root(parent, r), []).append(r)
    found = [rows for rows in members.values() if len(rows) > 1]
    files = catalog.rows_for([int(order[r]) for rows in found for r in rows])
    groups = []
    for rows in found:
        here = [(r, files[int(order[r])]) for r in rows if os.path.exists(files[int(order[r])].path)]
        if len(here) < 2:
            continue
        here.sort(key=lambda item: (-item[1].size, item[1].path))
        first = vectors[here[0][0]]
        copies = [Copy(f.path, float(vectors[r] @ first), f.size, f.id) for r, f in here]
        groups.append(Group([copies[0], *sorted(copies[1:], key=lambda c: (-c.similarity, c.path))]))
    groups.sort(key=lambda g: (-len(g.photos), g.photos[0].path))
    return groups
