"""GPU paths: automatic device and fp16 autocast. Skipped without CUDA; run on a lent GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import p2w

pytestmark = pytest.mark.cuda


def tv_args(tv: Path) -> dict[str, str]:
    return {
        "model": str(tv / "open_clip_config.json"),
        "pretrained": str(tv / "clip_state_dict.safetensors"),
        "mapper": str(tv / "mapper.safetensors"),
    }


def test_auto_device_is_cuda_with_fp16(tv):
    engine = p2w.load(**tv_args(tv))
    assert engine.backbone.placement.device.type == "cuda"
    assert engine.backbone.placement.precision == "fp16"
    assert next(engine.mapper.parameters()).is_cuda


def test_cuda_fp32_matches_reference(tv):
    exp = np.load(tv / "expected.npz")
    prompts = json.loads((tv / "prompts.json").read_text())
    engine = p2w.load(**tv_args(tv), device="cuda", precision="fp32")
    imgs = [str(tv / im["file"]) for im in prompts["images"]]
    rows = prompts["rows"][:8]
    got = engine.encode_queries(imgs, [r["caption"] for r in rows])
    # cuDNN convolutions may use TF32 in fp32 mode, hence a looser bound than the CPU's 1e-6
    np.testing.assert_allclose(got, exp["composed_features_normalized"][:8], atol=2e-3, rtol=0)
    np.testing.assert_allclose(engine.encode_images(imgs), exp["image_features_normalized"], atol=2e-3, rtol=0)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_stays_close_to_fp32(tv, precision):
    prompts = json.loads((tv / "prompts.json").read_text())
    imgs = [str(tv / im["file"]) for im in prompts["images"]]
    texts = [r["caption"] for r in prompts["rows"][:8]]
    ref = p2w.load(**tv_args(tv), device="cpu").encode_queries(imgs, texts)
    low = p2w.load(**tv_args(tv), device="cuda", precision=precision).encode_queries(imgs, texts)
    assert low.dtype == np.float32
    cosine = (ref * low).sum(axis=1)
    assert cosine.min() > (0.999 if precision == "fp16" else 0.99), cosine


def test_training_loss_on_cuda_under_autocast(tv):
    from p2w.training.objective import pic2word_loss

    exp = np.load(tv / "expected.npz")
    engine = p2w.load(**tv_args(tv), device="cuda", precision="fp16")
    feats = torch.from_numpy(exp["image_features"]).cuda()
    with torch.no_grad():
        loss = float(pic2word_loss(engine.backbone, engine.mapper, feats).loss)
    assert loss == pytest.approx(float(exp["train_loss"]), abs=5e-3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_runs_under_amp(tiny, tmp_path, precision):
    from PIL import Image

    from p2w.training.config import TrainConfig
    from p2w.training.loop import train

    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    result = train(
        TrainConfig(
            data=str(tmp_path),
            name=f"amp-{precision}",
            model=str(tiny.config),
            pretrained=str(tiny.weights),
            device="cuda",
            precision=precision,
            epochs=3,
            batch_size=8,
            lr=1e-2,
            hidden_dim=16,
            workers=2,
            val_fraction=0.0,
        )
    )
    assert all(np.isfinite(result.step_losses))
    assert result.epochs[-1].loss < result.epochs[0].loss


def test_index_on_cuda_matches_cpu(tiny, tmp_path):
    """The GPU indexing path (pinned-memory DataLoader, fp16 autocast) stores the vectors the CPU path does."""
    pytest.importorskip("hnswlib")  # a bare GPU machine may lack it (it builds from source)
    from PIL import Image

    from p2w.library.index import index
    from p2w.library.search import open_catalog
    from p2w.settings import Settings
    from p2w.spec import BackboneSpec

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    spec = BackboneSpec(str(tiny.config), str(tiny.weights))
    vectors = []
    for device in ("cpu", "cuda"):
        settings = Settings(home=tmp_path / device)
        engine = p2w.load(model=spec.model, pretrained=spec.pretrained, device=device)
        index([photos], spec, lambda e=engine: e, settings, workers=2, batch_size=4)
        catalog = open_catalog(spec, settings)
        rows = dict(catalog.con.execute("SELECT path, vec FROM files").fetchall())
        vectors.append(np.stack([np.frombuffer(rows[k], dtype=np.float32) for k in sorted(rows)]))
    assert (vectors[0] * vectors[1]).sum(axis=1).min() > 0.999
