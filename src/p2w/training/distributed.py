"""torchrun support: process-group set-up, decisions taken once and shared (``broadcast``, ``gather``, ``any``), the
contrastive loss over the global batch as the reference does, and the mean of a caption loss over the ranks.

Whatever the ranks must agree on (the run's name, which items a pass computes, when to stop) is decided by one rank
and shared, as open_clip_train does: never derived by each rank from its own read of a file or of the clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from p2w.errors import P2WError
from p2w.training.objective import LossParts, contrastive_loss

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (world 1, rank 0 when run alone)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and reports progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | None = None) -> Dist:
        """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); alone otherwise.

        NCCL when the ranks run on GPUs, gloo when ``device`` is the CPU or there is no GPU.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        on_gpu = torch.cuda.is_available() and not (device or "auto").lower().startswith("cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if on_gpu:
            torch.cuda.set_device(local_rank)  # the device of NCCL's collectives, object ones included
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if on_gpu else "gloo")
        return cls(world, dist.get_rank(), local_rank)

    def device(self, requested: str | None) -> str | None:
        """Each rank on its own GPU under torchrun; the requested device otherwise."""
        if self.world > 1 and torch.cuda.is_available() and (requested or "auto") in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (any picklable object; the others' ``obj`` is ignored, e.g. None)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def once(self, decide: Callable[[], T]) -> T:
        """``decide()`` run by rank 0 alone, its answer on every rank; a ``P2WError`` it raises is raised on every rank
        (the others would otherwise wait for an answer that never comes), e.g. ``d.once(lambda: plan(sources))``."""
        if self.world == 1:
            return decide()
        answer: tuple[T | None, str | None] = (None, None)
        if self.is_main:
            try:
                answer = (decide(), None)
            except P2WError as exc:
                answer = (None, str(exc))
        value, error = self.broadcast(answer)
        if error is not None:
            raise P2WError(error)
        return value  # type: ignore[return-value]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (it waits for them all, as a barrier does)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank: one answer for all of them (every rank must call it)."""
        if self.world == 1:
            return flag
        on_gpu = dist.get_backend() == "nccl"
        value = torch.tensor([int(flag)], device=torch.device("cuda", self.local_rank) if on_gpu else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        """Leave the process group."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def global_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: float, d: Dist) -> LossParts:
    """Contrastive loss over every rank's batch (local features first, others gathered without gradient).

    Its value is the single-process loss of the global batch. Backpropagate ``loss * d.world``: DDP averages the
    ranks' gradients, each of which holds the local features' share, so the sum is the full gradient.
    """
    if d.world == 1:
        return contrastive_loss(image, text, logit_scale)
    parts = []
    for local in (image, text):
        gathered = [torch.zeros_like(local) for _ in range(d.world)]
        dist.all_gather(gathered, local.detach().contiguous())
        parts.append(torch.cat([local, *gathered[: d.rank], *gathered[d.rank + 1 :]]))
    return contrastive_loss(parts[0], parts[1], logit_scale)


def rank_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a detached value over the ranks (a caption loss: each rank's is the mean of its own batch, so the
    ranks' mean is the global batch's); itself when run alone."""
    if d.world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / d.world
