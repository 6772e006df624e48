"""Which results a search keeps: an absolute score floor (``--min-score``) and a cutoff relative to the best result
(``--margin``: only results within that much of the best score).

A flat threshold means different things for different queries and modes (a composed query's cosines sit lower than
an image's); the relative cutoff follows each query's own best. docs/microworld.md ("A cutoff that means something")
measures both against the best single flat threshold; ``MARGIN`` is the margin that measured best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from p2w.core.gallery import Hit
from p2w.errors import P2WError

MARGIN = 0.05  # the relative cutoff's margin when it is asked for without one (measured: docs/microworld.md)


@dataclass(frozen=True)
class Cutoff:
    """Keep results scoring at least ``min_score`` and within ``margin`` of the best one (None: no such rule).
    ``Cutoff()`` keeps everything."""

    min_score: float | None = None
    margin: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise P2WError(f"--min-score {self.min_score} is not a cosine score: give a number from -1 to 1")
        if self.margin is not None and not 0.0 <= self.margin <= 2.0:
            raise P2WError(f"--margin {self.margin} is not a score difference: give a number from 0 to 2")

    def __bool__(self) -> bool:
        return self.min_score is not None or self.margin is not None

    def apply(self, hits: Sequence[Hit]) -> list[Hit]:
        """The hits (best first) that pass, re-ranked from 1."""
        if not hits or not self:
            return list(hits)
        best = max(h.score for h in hits)
        floor = max(
            self.min_score if self.min_score is not None else -2.0,
            best - self.margin if self.margin is not None else -2.0,
        )
        kept = [h for h in hits if h.score >= floor]
        return [replace(h, rank=i) for i, h in enumerate(kept, 1)]

    def to_wire(self) -> dict[str, Any]:
        """The server's JSON fields."""
        return {k: v for k, v in (("min_score", self.min_score), ("margin", self.margin)) if v is not None}
