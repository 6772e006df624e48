"""`p2w train` under torchrun (2 gloo processes on the CPU) when the ranks do not run in step: a rank that reads
the feature cache later, starts a second later or alone gets Ctrl-C. Whatever the ranks must agree on is decided
once (rank 0) and shared; these runs make the other rank late on purpose (a delay only: the real code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from p2w.training.config import TrainConfig
from p2w.training.loop import train
from training_runs import torchrun_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    """8 small distinct images and one broken file (sorted first)."""
    root = tmp_path_factory.mktemp("eight")
    rng = np.random.default_rng(1)
    for i in range(8):
        pixels = np.zeros((32, 40, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        pixels[8:20, 10:24] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(root / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    return root


def options(tiny, data: Path, **kw: Any) -> dict[str, Any]:
    base = {
        "data": str(data),
        "model": str(tiny.config),
        "pretrained": str(tiny.weights),
        "device": "cpu",
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-3,
        "hidden_dim": 16,
        "dropout": 0.0,
        "val_fraction": 0.0,
        "workers": 0,
    }
    return {**base, **kw}


@pytest.fixture(scope="module")
def late_run(tiny, eight, tmp_path_factory) -> list[dict[str, Any]]:
    """No --name; rank 1 starts 1.1 s after rank 0 (another second on the clock) and reads the feature cache 2 s
    late, when rank 0 has stored its share."""
    home = tmp_path_factory.mktemp("late-home")
    spec = {"config": options(tiny, eight), "late_start": 1.1, "late_reads": 2.0}
    return torchrun_train(spec, home, port=29541)


def test_every_image_is_encoded_when_a_rank_reads_the_cache_later(late_run):
    for rank in late_run:
        assert rank["images"] == 8, rank  # not 6: no image left to a rank that found it "missing" no more
        assert [Path(p).name for p, _ in rank["skipped"]] == ["broken.jpg"], rank
    reasons = [rank["skipped"][0][1] for rank in late_run]
    assert reasons[0] == reasons[1] != "cannot be decoded"  # the real reason, whichever rank read the file


def test_the_default_run_name_is_the_same_on_every_rank(late_run):
    assert late_run[0]["name"].startswith("mapper-")
    assert late_run[0]["name"] == late_run[1]["name"]


def test_ctrl_c_on_one_rank_stops_both_at_the_same_step_and_resumes(tiny, eight, tmp_path, p2w_home):
    """Ctrl-C reaches rank 1 alone during step 3; both ranks stop after step 4 (the next report, where they agree),
    one checkpoint is written, and the resumed run trains what one process trains straight through."""
    cfg = options(tiny, eight, name="ctrl-c", epochs=6)  # 2 steps an epoch (global batch 4 of 8 images)
    home = tmp_path / "home"
    stopped = torchrun_train({"config": cfg, "sigint_at": 2, "report_every": 2}, home, port=29542)
    assert [r.get("interrupted", "")[:25] for r in stopped] == ["interrupted at step 4/12;"] * 2, stopped
    checkpoint = torch.load(home / "runs" / "ctrl-c" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 4
    resumed = torchrun_train({"config": {**cfg, "resume": True}}, home, port=29543)
    straight = train(TrainConfig(**{**cfg, "batch_size": 4, "name": "straight"}))
    for rank in resumed:
        np.testing.assert_allclose(rank["step_losses"], straight.step_losses, atol=1e-5)


def test_a_source_rank_0_cannot_read_stops_every_rank_with_its_message(tiny, tmp_path, p2w_home):
    """Rank 0 alone plans ``--data``; its error reaches the other rank, which would otherwise wait for the plan."""
    (tmp_path / "empty").mkdir()
    ranks = torchrun_train({"config": options(tiny, tmp_path / "empty")}, p2w_home, port=29545, timeout=120)
    assert ranks[0]["error"] == ranks[1]["error"] and "no images" in ranks[0]["error"], ranks
