"""What a search answers from: a ``Gallery``, and its ``Hit``s.

Three kinds of gallery implement the protocol: the photo catalog of one backbone (SQLite + hnswlib,
``p2w.library.search.CatalogGallery``), a FAISS index over a layout (``p2w.datasets.index_gallery.IndexGallery``) and
a running clip-retrieval back end (``p2w.datasets.knn_service.KnnService``). Search, ``p2w serve`` and the CLI talk
to the protocol only, so every query kind works on each; ``p2w.serve.query.open_gallery`` is the one place that
chooses which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from p2w.core.dates import Where
from p2w.errors import P2WError
from p2w.fspath import from_json, to_json

if TYPE_CHECKING:  # a warm `p2w search` imports this module, and neither numpy nor torch
    import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 = best), cosine score, where the image is (a local file's path, or the key or
    path a layout's metadata gives; "" when none), the gallery's id of it, and what else the gallery knows."""

    rank: int
    score: float
    path: str
    size: int = 0
    mtime: float = 0.0
    id: int = 0
    caption: str | None = None
    url: str | None = None
    taken: str | None = None  # when the photo was taken, ISO 8601 (``p2w.core.dates``)
    taken_from: str | None = None  # where that time came from: "exif", "metadata" (a video's) or "mtime"
    time: float | None = None  # a video's frame: its offset in seconds (``path`` is the video's)
    times: tuple[float, ...] = ()  # a video: the times of every frame among the results, best first

    def to_json(self) -> dict[str, Any]:
        """The ``p2w search --json`` form: ``{"rank", "score", "path"}`` (``"path_bytes"`` for a name that is not
        UTF-8: ``p2w.fspath.to_json``), and ``"caption"``, ``"url"``, ``"taken"``, ``"taken_from"`` where the gallery
        has them; for a video ``"time"`` (the best frame's, in seconds) and ``"times"`` (all its frames' among the
        results, best first)."""
        extra = {k: v for k in _OPTIONAL if (v := getattr(self, k)) is not None}
        if self.times:
            extra["times"] = list(self.times)
        return {"rank": self.rank, "score": self.score, **to_json(self.path), **extra}

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Hit:
        """A hit back from its JSON form (``to_json``, with ``size``, ``mtime`` and ``id``, as ``p2w serve``
        answers)."""
        return cls(r["rank"], r["score"], from_json(r), r.get("size", 0), r.get("mtime", 0.0), r.get("id", 0),
                   **{k: r.get(k) for k in _OPTIONAL}, times=tuple(r.get("times", ())))  # fmt: skip


_OPTIONAL = ("caption", "url", "taken", "taken_from", "time")  # the fields of a Hit's JSON form where it has them


@dataclass(frozen=True)
class LocalFile:
    """A gallery item's image as a local file that may be served: only while it is still the file that was
    embedded (a regular file of this size and mtime, when the gallery recorded them)."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None
    hash: str | None = None
    time: float | None = None  # a video's frame: the item is the frame at this offset (seconds) of the video


class Gallery(Protocol):
    """A searchable collection of image embeddings of one backbone."""

    @property
    def name(self) -> str:
        """What it is, for messages: e.g. ``"the catalog of ViT-L-14/openai"``, ``"the index in emb/"``."""
        ...

    @property
    def dim(self) -> int:
        """The width of its vectors."""
        ...

    def count(self) -> int | None:
        """How many items it holds (None: not known, e.g. a remote back end)."""
        ...

    def search(self, query: np.ndarray, k: int, where: Where | None = None, ef: int | None = None) -> list[Hit]:
        """The ``k`` items closest to ``query`` (a unit vector); ``where``: only those under a folder or taken in a
        date range (where the gallery knows folders and dates; others refuse it); ``ef``: the search's breadth (where
        it has one)."""
        ...

    def features(self, item: int) -> np.ndarray | None:
        """Item ``item``'s unnormalised image features (what the image tower gave: its unit vector times its norm),
        for a query that refines from a result; None where the gallery does not hold them."""
        ...

    def local_file(self, item: int) -> LocalFile | None:
        """Item ``item``'s image as a local file, None where it has none (a URL, a shard's key)."""
        ...

    def close(self) -> None:
        """Release what it holds open."""
        ...


def unfiltered(where: Where | None, name: str) -> None:
    """For a gallery that knows neither folders nor dates (an index, a back end): a filter is an error."""
    if where:
        raise P2WError(f"--in, --after and --before narrow a photo catalog's search; {name} searches all it holds")
