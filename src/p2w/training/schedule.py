"""Which rows each step trains on: a seeded pass order per source (images, captions), each rank's share of the
global batch, and, with both objectives, which objective a step serves (``alternate``) or whether it serves both
(``sum``). Everything follows from the step number, so a resumed run continues exactly."""

from __future__ import annotations

import logging
import math

import torch

from p2w.errors import P2WError
from p2w.training.config import CAPTION_EPOCHS, LINCIR_STEPS, LINCIR_WARMUP, MIN_CAPTION_STEPS
from p2w.training.distributed import Dist

log = logging.getLogger(__name__)

ROUND_STEPS = 1000  # runs with captions report and checkpoint every epoch, or every this many steps if longer
CAPTION_STREAM = 1_000_000_007  # offsets the captions' pass orders from the images'


class Cursor:
    """The batches of one source: pass ``p`` is the permutation seeded ``seed * 1_000_003 + p`` (and one random
    view per row from the same generator); batch ``k`` is this rank's slice of the ``k``-th global batch."""

    def __init__(self, rows: torch.Tensor, local_batch: int, d: Dist, seed: int, views: int = 1) -> None:
        self.rows, self.local_batch, self.d, self.seed, self.views = rows, local_batch, d, seed, views
        self.per_pass = len(rows) // (local_batch * d.world)
        self._pass = -1
        self._order = self._view = rows

    def at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and views of batch ``k`` (counted over all passes)."""
        p, i = divmod(k, self.per_pass)
        if p != self._pass:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            self._order = self.rows[torch.randperm(len(self.rows), generator=g)]
            self._view = torch.randint(self.views, (len(self.rows),), generator=g)
            self._pass = p
        lo = i * self.local_batch * self.d.world + self.d.rank * self.local_batch
        return self._order[lo : lo + self.local_batch], self._view[lo : lo + self.local_batch]


def local_batch(wanted: int, n: int, d: Dist, what: str) -> int:
    """The batch per process: ``wanted``, lowered (with a warning) so that one global batch fits ``n`` rows."""
    global_batch = min(wanted * d.world, n - n % d.world)
    if global_batch < 2 * d.world:
        raise P2WError(f"only {n} training {what} for {d.world} process(es); add {what}")
    if global_batch < wanted * d.world:
        log.warning("batch size lowered to %d: only %d training %s", global_batch // d.world, n, what)
    return global_batch // d.world


def parts_at(step: int, objective: str, mix: str) -> tuple[int | None, int | None]:
    """``(image batch, caption batch)`` numbers of a step; None where the step does not train that objective."""
    if objective == "pic2word":
        return step, None
    if objective == "lincir":
        return None, step
    if mix == "sum":
        return step, step
    return (step // 2, None) if step % 2 == 0 else (None, step // 2)


def steps_per_epoch(objective: str, mix: str, images: Cursor | None, captions: Cursor | None) -> int:
    """Steps of one pass over the images (Pic2Word alone) or over the captions (runs with captions)."""
    if captions is None:
        assert images is not None
        return images.per_pass
    return captions.per_pass * (2 if objective == "mixed" and mix == "alternate" else 1)


def caption_steps(per_epoch: int) -> int:
    """The default length of a run with captions: ``CAPTION_EPOCHS`` epochs, at least ``MIN_CAPTION_STEPS`` and at
    most LinCIR's ``LINCIR_STEPS``, e.g. 1,000 steps for 3,200 captions of 256 a step (12 steps an epoch), 6,248
    for 400,000 (1,562 an epoch), 50,000 for CC3M's 3.3M (12,962 an epoch: LinCIR's run)."""
    return min(LINCIR_STEPS, max(MIN_CAPTION_STEPS, CAPTION_EPOCHS * per_epoch))


def default_warmup(total: int, with_captions: bool) -> int:
    """Warm-up steps when none are given: 10% of the run, at most the reference's 10,000 (Pic2Word) or LinCIR's 500
    (runs with captions)."""
    return min(LINCIR_WARMUP if with_captions else 10_000, total // 10)


def round_steps(per_epoch: int, with_captions: bool) -> int:
    """Steps between two summaries and checkpoints: an epoch, or for runs with captions whole epochs of at least
    ``ROUND_STEPS`` steps (a small caption set would otherwise checkpoint every few steps)."""
    if not with_captions:
        return per_epoch
    return per_epoch * max(1, math.ceil(ROUND_STEPS / per_epoch))
