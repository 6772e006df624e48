"""Which results a search keeps: an absolute score floor (``--min-score``) and the relative cutoff (``--cutoff``: the
results before the first place where the scores drop, a gap between one result and the next over ``DROP`` times the
median gap of the results).

The relative rule measured best of those tried in the micro world (docs/microworld.md, "A cutoff that means
something"): a flat threshold means different things for different modes (a composed query's cosines sit lower than
an average query's) and models, while a drop measured in the results' own median gap is free of their scale, and its
best factor stayed within 26-33 from 24 to 200 results.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from p2w.core.gallery import Hit
from p2w.errors import P2WError

DROP = 30.0  # --cutoff: a gap over this many median gaps ends the results (measured: docs/microworld.md)


@dataclass(frozen=True)
class Cutoff:
    """Keep results scoring at least ``min_score`` and, with ``drop``, those before the first gap between one
    result and the next over ``drop`` times the median such gap (None: no such rule). ``Cutoff()`` keeps all;
    ``Cutoff(drop=DROP)`` is ``--cutoff``."""

    min_score: float | None = None
    drop: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise P2WError(f"--min-score {self.min_score} is not a cosine score: give a number from -1 to 1")
        if self.drop is not None and not 1.0 <= self.drop <= 1e6:
            raise P2WError(f"a cutoff's drop of {self.drop} median gaps is not one: give a factor from 1 on")

    def __bool__(self) -> bool:
        return self.min_score is not None or self.drop is not None

    def apply(self, hits: Sequence[Hit]) -> list[Hit]:
        """The hits (best first) that pass, ranked again from 1; the best one is kept by ``drop``."""
        kept = [h for h in hits if self.min_score is None or h.score >= self.min_score]
        if self.drop is not None:
            kept = kept[: before_drop([h.score for h in kept], self.drop)]
        return [replace(h, rank=i) for i, h in enumerate(kept, 1)]

    def to_wire(self) -> dict[str, Any]:
        """The server's JSON fields."""
        return {k: v for k, v in (("min_score", self.min_score), ("drop", self.drop)) if v is not None}


def before_drop(scores: Sequence[float], factor: float) -> int:
    """How many of ``scores`` (best first) come before the first gap over ``factor`` times their median gap (all of
    them when there is none, or fewer than three)."""
    gaps = [a - b for a, b in itertools.pairwise(scores)]
    if len(gaps) < 2:
        return len(scores)
    limit = factor * max(statistics.median(gaps), 1e-9)
    return next((i + 1 for i, gap in enumerate(gaps) if gap > limit), len(scores))
