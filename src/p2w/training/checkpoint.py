"""Training checkpoints: written atomically by rank 0, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from p2w.atomic import atomic_path
from p2w.errors import P2WError, summary
from p2w.training.config import RUN_FIELDS
from p2w.training.state import Run

CHECKPOINT_FORMAT = "p2w-train-checkpoint-1"


def save_checkpoint(run: Run, path: Path) -> None:
    """Write the run's state atomically (rank 0 only); loads back with ``weights_only=True``."""
    if not run.d.is_main:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": run.step,
        "config": {k: getattr(run.cfg, k) for k in RUN_FIELDS},
        "backbone": run.backbone.id,
        "mapper": run.mapper.state_dict(),
        "optimizer": run.stepper.optimizer.state_dict(),
        "scaler": run.stepper.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": run.history,
        "step_losses": run.step_losses,
        "keywords": run.captions.rule if run.captions is not None else "",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many types
        raise P2WError(f"cannot read checkpoint {path}: {summary(exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise P2WError(f"{path} is not a p2w training checkpoint")
    return state


def restore_checkpoint(run: Run, path: Path) -> None:
    state = read_checkpoint(path)
    if state["backbone"] != run.backbone.id:
        raise P2WError(f"the checkpoint was made with backbone {state['backbone']}, not {run.backbone.id}")
    rule = run.captions.rule if run.captions is not None else ""
    if state.get("keywords", "") != rule:
        raise P2WError(
            f"the run chose keywords by {state.get('keywords')!r}, this machine by {rule!r}; resume it where the "
            "same keyword rule runs (spaCy and its model importable, or not)"
        )
    run.mapper.load_state_dict(state["mapper"])
    run.stepper.optimizer.load_state_dict(state["optimizer"])
    run.stepper.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    run.step, run.history, run.step_losses = state["step"], list(state["history"]), list(state["step_losses"])
