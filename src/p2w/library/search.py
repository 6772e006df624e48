"""``search``: the catalogued photos closest to a query vector, all of them or only those that pass a filter (a
folder, a date range: ``p2w.core.dates.Where``); the catalog as a ``p2w.core.gallery.Gallery`` (``CatalogGallery``).

A filtered search returns ``k`` photos whenever ``k`` pass: few passing photos (at most ``exact_limit`` of the
catalog's size) are scored exactly; more are searched in the ANN with hnswlib's filter, and exactly after all when
that finds too few (docs/performance.md, "Filtered search").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from p2w.core.dates import Where
from p2w.core.gallery import LocalFile
from p2w.errors import P2WError
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, Hit, catalog_for
from p2w.library.schema import count_files
from p2w.settings import Settings
from p2w.spec import BackboneSpec

EXACT_FACTOR = 14.0  # passing photos scored exactly: up to this times the square root of the catalog's size


def open_catalog(spec: BackboneSpec, settings: Settings | None = None) -> Catalog:
    """The catalog of ``spec`` for searching; a missing or empty one is an error naming the command that fills it,
    and the catalogs of other models that could answer instead."""
    folder = catalog_for(spec, settings)
    if not (folder / "catalog.sqlite").is_file():
        raise P2WError(_no_catalog(spec, settings))
    catalog = Catalog(folder, spec.id)
    if catalog.count() == 0:
        catalog.close()
        raise P2WError(f"the catalog of {spec.id} is empty; add photos with: p2w index DIR")
    return catalog


def search(
    catalog: Catalog,
    query: np.ndarray,
    k: int = 10,
    where: Where | None = None,
    ef: int | None = None,
    ann: ann_mod.Ann | None = None,
) -> list[Hit]:
    """The ``k`` catalogued photos closest to ``query`` (a unit vector), only those that pass ``where`` when given.
    ``ef`` widens the approximate search (default ``p2w.ann.default_ef(dim)``); ``ann``: an index already loaded
    (a resident server's), else the saved one is loaded.

    Files deleted since they were indexed are left out of the results.
    """
    if query.shape != (catalog.dim,):
        raise P2WError(f"query has {query.shape[-1]} dimensions but the catalog holds {catalog.dim}-d vectors")
    ranked = _ranking(catalog, query, where, ef, ann)
    for want in (2 * k + 8, 8 * k + 32, 32 * k + 128):  # wider when frames of the same videos fill the first
        ids, scores = ranked(want)
        hits = _hits(catalog, ids, scores, k)
        if len(hits) == k or len(ids) < want:
            return hits
    return hits


def _hits(catalog: Catalog, ids: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
    """The first ``k`` results of the ranked ``ids``: files gone from disk left out, the frames of one video ranked
    before the ``k``-th result grouped into its best one's hit (its ``times``)."""
    rows = catalog.rows_for([int(i) for i in ids])
    hits: list[Hit] = []
    videos: dict[str, int] = {}  # a video's path -> its hit's place
    for i, score in zip(ids, scores, strict=True):
        row = rows.get(int(i))
        if row is None or not os.path.exists(row.path):
            continue
        if row.time is not None and row.path in videos:
            place = videos[row.path]
            hits[place] = replace(hits[place], times=(*hits[place].times, row.time))
            continue
        if row.time is not None:
            videos[row.path] = len(hits)
        taken = row.taken
        hits.append(Hit(len(hits) + 1, float(score), row.path, row.size, row.mtime_ns / 1e9, int(i),
                        taken=taken.iso() if taken else None, taken_from=taken.source if taken else None,
                        time=row.time, times=() if row.time is None else (row.time,)))  # fmt: skip
        if len(hits) == k:
            break
    return hits


class CatalogGallery:
    """The photo catalog of one backbone as a ``Gallery``: its ANN (or exact search under ``--in``), the vectors and
    norms it keeps, its files."""

    def __init__(self, catalog: Catalog, ann: ann_mod.Ann | None = None) -> None:
        self.catalog, self.ann = catalog, ann

    @property
    def name(self) -> str:
        return f"the catalog of {self.catalog.backbone}"

    @property
    def dim(self) -> int:
        return self.catalog.dim

    def count(self) -> int | None:
        """Its photos and videos (a video once, however many frames it has)."""
        return count_files(self.catalog.con)[0]

    def search(self, query: np.ndarray, k: int, where: Where | None = None, ef: int | None = None) -> list[Hit]:
        return search(self.catalog, query, k, where, ef, self.ann)

    def features(self, item: int) -> np.ndarray | None:
        """The catalog's unit vector of photo ``item`` times its norm (None for a photo indexed before norms were
        kept, or not catalogued)."""
        norm = self.catalog.norms_for([item]).get(item)
        vector = self.catalog.vectors_for([item]).get(item)
        if norm is None or vector is None:
            return None
        return np.frombuffer(vector, dtype=np.float32) * np.float32(norm)

    def local_file(self, item: int) -> LocalFile | None:
        row = self.catalog.rows_for([item]).get(item)
        return None if row is None else LocalFile(row.path, row.size, row.mtime_ns, row.hash, row.time)

    def close(self) -> None:
        self.catalog.close()


Ranked = Callable[[int], tuple[np.ndarray, np.ndarray]]  # how many -> the best ids and their scores


def _ranking(
    catalog: Catalog, query: np.ndarray, where: Where | None, ef: int | None, ann: ann_mod.Ann | None
) -> Ranked:
    """How the catalog's best for ``query`` are found, decided once a search (the passing ids read and the ANN
    loaded at most once, however much the search widens): the ANN; under a filter, exact scores when few pass, else
    the ANN's filter (and exact scores after all when it finds fewer than asked)."""
    if not where:
        index = ann or ann_mod.load(catalog)
        return lambda want: index.query(query, want, ef=ef)
    allowed = catalog.ids_where(where)
    if not allowed and where.within is not None and not catalog.ids_where(Where(where.within)):
        raise P2WError(f"no catalogued photos under {where.within}; index it with: p2w index {where.within}")
    if len(allowed) <= exact_limit(ann.live if ann is not None else catalog.count()):
        return lambda want: exact(catalog, query, allowed, want)
    index = ann or ann_mod.load(catalog)
    passing = set(allowed).__contains__

    def filtered(want: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = index.query(query, want, ef, allowed=passing)
        return (ids, scores) if len(ids) >= min(want, len(allowed)) else exact(catalog, query, allowed, want)

    return filtered


def exact_limit(total: int) -> int:
    """How many passing photos of a catalog of ``total`` are scored exactly rather than through the ANN's filter:
    exact scoring costs each passing photo (reading its vector), the filter the more the fewer pass, and they cross
    at about 14 times the square root of the catalog's size (measured at 30,000, 100,000 and 300,000 photos: 2,150,
    4,200-4,500 and 8,000; docs/performance.md, "Filtered search")."""
    return int(EXACT_FACTOR * math.sqrt(max(total, 0)))


def exact(catalog: Catalog, query: np.ndarray, ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of the photos ``ids``, scored exactly (their vectors read from the catalog)."""
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    order, vectors = ann_mod.matrix(catalog.vectors_for(ids))
    scores = vectors @ query.astype(np.float32)
    top = np.argsort(-scores, kind="stable")[:k]
    return order[top], scores[top]


def _no_catalog(spec: BackboneSpec, settings: Settings | None) -> str:
    """Why there is nothing to search, and what there is: e.g. the micro model's catalog after ``p2w demo``."""
    from p2w.library.status import status
    from p2w.spec import options_for

    settings = settings or Settings.from_env()
    message = f"no catalog for {spec.id} in {settings.home / 'catalogs'}; build one with: p2w index DIR"
    others = [c for c in status(settings) if c.files]
    if not others:
        return message
    listed = "; ".join(
        f"{c.backbone} ({c.files} photos"
        + (f": search it with {options_for(c.backbone)})" if options_for(c.backbone) else ")")
        for c in others
    )
    return f"{message}, or search a catalog of another model: {listed}"
