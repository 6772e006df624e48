"""What a request to ``p2w serve`` may ask for, checked: a search (``Query``, with its reference images), a
near-duplicates report (``DuplicatesQuery``), within ``Limits``. Every field of a request is treated as hostile:
wrong types, values out of range and unknown fields are a ``ServeError`` (HTTP 400) naming the field."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from p2w.core.cutoff import Cutoff
from p2w.core.dates import Where
from p2w.errors import P2WError
from p2w.serve.errors import ServeError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    upload_bytes: int = 32 << 20  # 32 MiB
    upload_pixels: int = 50_000_000  # 50 megapixels, after JPEG draft reduction
    k: int = 200  # results per search
    ef: int = 10_000  # the search breadth one query may ask for
    uploads_kept: int = 64  # uploads whose features are kept (least recently used dropped)
    images: int = 8  # reference images of one query
    groups: int = 500  # groups of near-duplicates one answer shows


@dataclass(frozen=True)
class Query:
    """A composed search: reference images (uploads, catalog photos, or none), words, mode, template and alpha."""

    text: str | None = None
    mode: str | None = None
    prompt: str | None = None
    alpha: float | None = None  # the text side's weight in compose.WEIGHED (None: the backbone's default)
    photo: int | None = None  # a catalog photo id as the reference image
    upload: str | None = None  # an upload id (``Service.upload``) as the reference image
    images: tuple[Reference, ...] = ()  # several references, in order: the i-th '*' of the prompt takes the i-th
    k: int = 24
    within: str | None = None  # only photos under this folder (absolute path)
    after: str | None = None  # only photos taken from the start of this date on (``p2w.core.dates.parse_bound``)
    before: str | None = None  # only photos taken before the start of this date
    ef: int | None = None
    min_score: float | None = None  # only results scoring at least this
    drop: float | None = None  # only results before the scores drop (``p2w.core.cutoff``; the page: its DROP)

    @classmethod
    def from_json(cls, data: Any, limits: Limits) -> Query:
        """A query from a request's JSON object; wrong types or values are a ``ServeError`` (400)."""
        if not isinstance(data, dict):
            raise ServeError("the search request must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ServeError(f"unknown search fields: {', '.join(unknown)}")
        for key in ("text", "mode", "prompt", "upload", "within", "after", "before"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ServeError(f"{key} must be a string")
        number = (int, float)
        fields = (("photo", int), ("k", int), ("ef", int), ("alpha", number), ("min_score", number), ("drop", number))
        for key, kinds in fields:
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ServeError(f"{key} must be {'an integer' if kinds is int else 'a number'}")
        data = {**data, "images": _references(data.get("images"), limits)}
        q = cls(**{k: v for k, v in data.items() if v is not None and v != ""})
        if not 1 <= q.k <= limits.k:
            raise ServeError(f"k must be between 1 and {limits.k}")
        if q.ef is not None and not 1 <= q.ef <= limits.ef:
            raise ServeError(f"ef must be between 1 and {limits.ef}")
        if q.alpha is not None and not 0 <= q.alpha <= 1:  # NaN too
            raise ServeError("alpha must be between 0 (the image alone) and 1 (the text alone)")
        if sum((q.photo is not None, q.upload is not None, bool(q.images))) > 1:
            raise ServeError("give the reference images one way: photo, upload, or images")
        if q.within is not None and not os.path.isabs(q.within):
            raise ServeError("within must be an absolute folder path")
        try:
            q.where(), q.cutoff()  # dates that are not dates, scores that are not scores
        except P2WError as exc:
            raise ServeError(str(exc)) from exc
        return q

    def where(self) -> Where:
        """Which photos it may return."""
        return Where.parse(self.within, self.after, self.before)

    def cutoff(self) -> Cutoff:
        """Which results it keeps."""
        return Cutoff(self.min_score, self.drop)


@dataclass(frozen=True)
class DuplicatesQuery:
    """Which near-duplicates the page asks for: at or above ``threshold`` (None: the library's), under ``within``."""

    threshold: float | None = None
    within: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> DuplicatesQuery:
        """From a request's JSON object; anything else is a ``ServeError`` (400)."""
        if not isinstance(data, dict) or set(data) - {"threshold", "within"}:
            raise ServeError('the duplicates request is {"threshold": NUMBER, "within": FOLDER}, both optional')
        threshold, within = data.get("threshold"), data.get("within")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ServeError("threshold must be a number")
        if threshold is not None and not -1 <= threshold <= 1:
            raise ServeError("threshold must be a cosine, from -1 to 1")
        if within is not None and not (isinstance(within, str) and os.path.isabs(within)):
            raise ServeError("within must be an absolute folder path")
        return cls(None if threshold is None else float(threshold), within or None)


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
