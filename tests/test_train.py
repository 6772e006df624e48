"""`p2w train` on a tiny random CLIP: learning, caching, resuming, torchrun, bad data."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core import features
from p2w.errors import P2WError, TrainingInterrupted
from p2w.mappers.files import read_mapper
from p2w.training.config import TrainConfig
from p2w.training.data import training_data
from p2w.training.loop import train
from p2w.training.step import lr_at
from training_runs import assert_same_run, two_and_one_process

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 small images with distinct colour blocks, in nested folders, plus one broken file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(24):
        pixels = np.zeros((40, 48, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        for _ in range(4):
            y, x = rng.integers(0, 32), rng.integers(0, 40)
            pixels[y : y + 8, x : x + 8] = rng.integers(0, 255, 3)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    return root


def config(tiny, photos, **kw) -> TrainConfig:
    base = {
        "data": str(photos),
        "name": "t",
        "model": str(tiny.config),
        "pretrained": str(tiny.weights),
        "device": "cpu",
        "epochs": 3,
        "batch_size": 8,
        "lr": 1e-3,
        "hidden_dim": 16,
        "dropout": 0.0,
        "val_fraction": 0.0,
        "augment_views": 1,
        "workers": 0,
    }
    return TrainConfig(**{**base, **kw})


def test_loss_decreases_and_mapper_is_registered(tiny, photos, p2w_home, images):
    result = train(config(tiny, photos, epochs=15, lr=1e-2, val_fraction=0.25, name="learns"))
    first, last = result.epochs[0], result.epochs[-1]
    assert last.loss < first.loss - 0.3, [e.loss for e in result.epochs]
    assert result.samples == 18 and len(result.skipped) == 1  # 24 images, 6 held out, broken.jpg skipped
    assert last.val_recall_at_1 is not None and 0 <= last.val_recall_at_1 <= 1
    mf = read_mapper(p2w_home / "mappers" / "learns.safetensors")
    assert mf.backbone == tiny.backbone_id and mf.mapper.hidden_dim == 16
    query = runner.invoke(
        app,
        [
            "embed",
            "query",
            str(images[0]),
            "in red",
            "--mapper",
            "learns",
            "--model",
            str(tiny.config),
            "--pretrained",
            str(tiny.weights),
        ],
    )
    assert query.exit_code == 0, query.stderr
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    assert runner.invoke(app, ["index", str(photos), *backbone, "--workers", "0"]).exit_code == 0
    found = runner.invoke(app, ["search", str(images[0]), "in red", "--mapper", "learns", *backbone, "--json"])
    assert found.exit_code == 0, found.stderr  # the trained mapper is usable by name in p2w search
    assert len(json.loads(found.stdout)) == 10


def test_a_file_name_that_is_not_utf8_trains(tiny, tmp_path, p2w_home):
    """A photo named with byte 0xE9 (latin-1 'é'; Python's str for it holds a surrogate escape) is hashed, cached
    (its path's exact bytes) and trained on, like any other."""
    root = tmp_path / "latin1"
    root.mkdir()
    names = [os.fsdecode(b"latin1_caf\xe9.png"), "plain.png", "other.png", "fourth.png"]
    for i, name in enumerate(names):
        Image.new("RGB", (24, 24), (60 * i, 255 - 50 * i, 30)).save(root / name)
    common = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu", "--workers", "0"]
    options = ["--epochs", "1", "--batch-size", "4", "--hidden-dim", "16", "--val-fraction", "0", "--json"]
    result = runner.invoke(app, ["train", "--data", str(root), "--name", "latin1", *common, *options])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["skipped"]) == (4, 0)
    again = train(config(tiny, root, name="latin1-again", epochs=1, batch_size=4))  # from the cache, by bytes
    assert again.images == 4 and not again.skipped


def test_cached_and_uncached_give_the_same_losses(tiny, photos):
    cached = train(config(tiny, photos, name="cached"))
    live = train(config(tiny, photos, name="live", cache=False))
    np.testing.assert_allclose(cached.step_losses, live.step_losses, atol=1e-5)
    assert len(cached.step_losses) == 3 * (24 // 8)


def test_second_run_reads_no_image_and_moved_files_reuse_features(tiny, photos, tmp_path, monkeypatch):
    train(config(tiny, photos, name="first", augment_views=2, workers=2))  # DataLoader worker processes
    copy = tmp_path / "moved"
    copy.mkdir()
    for p in sorted(photos.rglob("*.png")):
        (copy / f"renamed_{p.name}").write_bytes(p.read_bytes())

    def no_decoding(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an image was decoded although its features are cached")

    monkeypatch.setattr(features, "open_image", no_decoding)
    again = train(config(tiny, copy, name="second", augment_views=2))
    assert again.samples == 24


def test_resume_continues_exactly(tiny, photos, p2w_home, monkeypatch):
    monkeypatch.setattr("p2w.training.loop.REPORT_EVERY", 1)  # report (and so check for Ctrl-C) at every step
    straight = train(config(tiny, photos, name="straight", dropout=0.1))

    class StopAtStep4:
        def stage(self, text): ...
        def progress(self, stage, done, total): ...
        def epoch(self, summary): ...
        def step(self, step, total, loss, lr, rate):  # type: ignore[no-untyped-def]
            if step == 4:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    cfg = config(tiny, photos, name="resumed", dropout=0.1)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, callbacks=StopAtStep4())
    assert not (p2w_home / "mappers" / "resumed.safetensors").exists()
    ckpt = torch.load(p2w_home / "runs" / "resumed" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4
    resumed = train(replace(cfg, resume=True))
    np.testing.assert_allclose(resumed.step_losses, straight.step_losses, atol=1e-6)
    a = read_mapper(p2w_home / "mappers" / "straight.safetensors").mapper.state_dict()
    b = read_mapper(p2w_home / "mappers" / "resumed.safetensors").mapper.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    with pytest.raises(P2WError, match="changed: lr"):
        train(replace(cfg, resume=True, lr=5e-4))


def test_resume_by_name_alone(tiny, photos, p2w_home, monkeypatch):
    monkeypatch.setattr("p2w.training.loop.REPORT_EVERY", 1)

    class StopAtStep2:
        def stage(self, text): ...
        def progress(self, stage, done, total): ...
        def epoch(self, summary): ...
        def step(self, step, total, loss, lr, rate):  # type: ignore[no-untyped-def]
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="p2w train --name byname --resume"):
        train(config(tiny, photos, name="byname", epochs=2), callbacks=StopAtStep2())
    result = runner.invoke(app, ["train", "--name", "byname", "--resume", "--json"])  # the first run's options
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["backbone"] == tiny.backbone_id
    assert (p2w_home / "mappers" / "byname.safetensors").is_file()


def test_names_are_never_clobbered(tiny, photos):
    train(config(tiny, photos, name="taken", epochs=1))
    with pytest.raises(P2WError, match="exists already"):
        train(config(tiny, photos, name="taken", epochs=1))
    with pytest.raises(P2WError, match="no checkpoint to resume"):
        train(config(tiny, photos, name="never-ran", resume=True))
    train(config(tiny, photos, name="taken", epochs=1, force=True))


def test_bad_data(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(P2WError, match="no images"):
        train(config(tiny, empty))
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (10, 10)).save(one / "x.png")
    (one / "bad.png").write_bytes(b"broken")
    with pytest.raises(P2WError, match="1 readable image"):
        train(config(tiny, one))
    with pytest.raises(P2WError, match="not found"):
        train(config(tiny, tmp_path / "missing"))


def test_train_walks_a_folder_as_index_does(tmp_path):
    """One walker: `p2w train --data DIR` reads the files `p2w index DIR` would catalog, no more, no fewer."""
    from PIL import Image

    from p2w.core.walk import scan

    root = tmp_path / "photos"
    for rel in ("a.png", "sub/b.jpg", "$RECYCLE.BIN/deleted.png", "@eaDir/thumb.jpg", ".hidden/c.png", "other/d.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / rel)
    (root / "linked").symlink_to(root / "other", target_is_directory=True)  # a second way in: walked once
    (root / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside" / "e.png")
    walked = sorted(Path(f.path) for f in scan([root]))
    assert training_data(str(root)).files == walked
    assert {p.name for p in walked} == {"a.png", "b.jpg", "d.png", "e.png"}


def test_schedule_matches_the_reference():
    assert lr_at(0, 1e-4, 10, 100) == pytest.approx(1e-5)
    assert lr_at(9, 1e-4, 10, 100) == pytest.approx(1e-4)
    assert lr_at(55, 1e-4, 10, 100) == pytest.approx(5e-5)
    assert lr_at(100, 1e-4, 10, 100) == pytest.approx(0, abs=1e-12)


def test_cli_train_json(tiny, photos, p2w_home):
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(photos),
            "--name",
            "cli",
            "--model",
            str(tiny.config),
            "--pretrained",
            str(tiny.weights),
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--hidden-dim",
            "16",
            "--workers",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["name"] == "cli" and summary["backbone"] == tiny.backbone_id
    assert summary["mapper_path"] == str(p2w_home / "mappers" / "cli.safetensors")
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert {"loss", "val_recall@1", "samples_per_s"} <= set(summary["epochs"][0])


@pytest.mark.slow
def test_two_process_gloo_agrees_with_one_process(tiny, photos, tmp_path):
    common = [
        "train",
        "--data",
        str(photos),
        "--model",
        str(tiny.config),
        "--pretrained",
        str(tiny.weights),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--hidden-dim",
        "16",
        "--workers",
        "0",
        "--dropout",
        "0",
        "--val-fraction",
        "0",
        "--lr",
        "1e-3",
        "--json",
    ]
    ddp, single = two_and_one_process(common, tmp_path / "home", batch=4, port=29533)
    assert ddp["samples"] == single["samples"] == 24
    assert_same_run(ddp, single)
