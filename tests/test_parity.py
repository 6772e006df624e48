"""Numerical parity with the Pic2Word reference implementation (golden vectors in tests/data/pic2word-parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ATOL = 1e-5  # features and logits (values O(1-10))
ATOL_UNIT = 1e-6  # normalised features and losses


@pytest.fixture(scope="module")
def exp(tv: Path) -> dict[str, np.ndarray]:
    return dict(np.load(tv / "expected.npz"))


@pytest.fixture(scope="module")
def prompts(tv: Path) -> dict:
    return json.loads((tv / "prompts.json").read_text())


@pytest.fixture(scope="module")
def image_paths(tv: Path, prompts: dict) -> list[str]:
    return [str(tv / im["file"]) for im in prompts["images"]]


def query_args(row: dict) -> tuple[str | None, str]:
    """(TEXT, template) that reproduce a reference row through p2w's public query interface."""
    if row["kind"] == "cirr":
        return row["caption"], "a photo of * , {text}"
    if row["kind"] == "fashioniq":
        cap1, cap2 = row["captions"]
        return f"{cap2} and {cap1}", "a photo of * , {text}"
    return None, f"a {row['domain']} of *"


def baseline_args(row: dict) -> tuple[str | None, str]:
    """(TEXT, template) of the reference's text-only baseline of that benchmark, in text mode."""
    if row["kind"] == "cirr":
        return row["caption"], "{text}"
    if row["kind"] == "fashioniq":
        return query_args(row)
    return None, row["baseline_text"]


def test_preprocessing_matches_reference(tv, tv_engine, image_paths):
    pixels = tv_engine._pixels(image_paths).numpy()
    np.testing.assert_allclose(pixels, np.load(tv / "images.npy"), atol=1e-6, rtol=0)


def test_image_features_and_mapped_tokens(tv_engine, image_paths, exp):
    raw = tv_engine.encode_images(image_paths, normalize=False)
    np.testing.assert_allclose(raw, exp["image_features"], atol=ATOL, rtol=0)
    unit = tv_engine.encode_images(image_paths)
    np.testing.assert_allclose(unit, exp["image_features_normalized"], atol=ATOL_UNIT, rtol=0)
    with torch.inference_mode():
        tokens = tv_engine.mapper(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(tokens, exp["mapped_tokens"], atol=ATOL, rtol=0)


def test_token_ids_and_positions(tv_engine, prompts, exp):
    from p2w.core.compose import fill, prompt_ids

    rows = prompts["rows"]
    filled = [fill(query_args(r)[1], query_args(r)[0]) for r in rows]
    assert filled == [r["prompt"].strip() for r in rows]
    ids = prompt_ids(tv_engine.backbone, filled, need_star=True).cpu().numpy()
    np.testing.assert_array_equal(ids, exp["token_ids"])
    np.testing.assert_array_equal(tv_engine.backbone.star_positions(torch.from_numpy(ids)), exp["star_positions"])
    np.testing.assert_array_equal(ids.argmax(axis=1), exp["eot_positions"])


@pytest.mark.parametrize("kind", ["cirr", "fashioniq", "domain"])
def test_composed_features(tv_engine, prompts, exp, image_paths, kind):
    rows = [r for r in prompts["rows"] if r["kind"] == kind]
    idx = [r["row"] for r in rows]
    for template in sorted({query_args(r)[1] for r in rows}):  # one batch per template, as the reference runs them
        batch = [r for r in rows if query_args(r)[1] == template]
        sel = [r["row"] for r in batch]
        imgs = [image_paths[r["image_index"]] for r in batch]
        texts = [query_args(r)[0] for r in batch]
        raw = tv_engine.encode_queries(imgs, texts, mode="pic2word", prompt=template, normalize=False)
        unit = tv_engine.encode_queries(imgs, texts, mode="pic2word", prompt=template)
        np.testing.assert_allclose(raw, exp["composed_features"][sel], atol=ATOL, rtol=0)
        np.testing.assert_allclose(unit, exp["composed_features_normalized"][sel], atol=ATOL_UNIT, rtol=0)
    assert len(idx) == {"cirr": 8, "fashioniq": 8, "domain": 32}[kind]


def test_text_baselines_and_mixture(tv_engine, prompts, exp, image_paths):
    for r in prompts["rows"]:
        i, img = r["row"], image_paths[r["image_index"]]
        text, template = query_args(r)
        star = tv_engine.encode_query(None, text, mode="text", prompt=template, normalize=False)
        np.testing.assert_allclose(star, exp["text_star_features"][i], atol=ATOL, rtol=0)
        b_text, b_template = baseline_args(r)
        base = tv_engine.encode_query(None, b_text, mode="text", prompt=b_template)
        np.testing.assert_allclose(base, exp["baseline_text_features_normalized"][i], atol=ATOL_UNIT, rtol=0)
        mix = tv_engine.encode_query(img, b_text, mode="average", prompt=b_template)
        np.testing.assert_allclose(mix, exp["mixture_features_normalized"][i], atol=ATOL_UNIT, rtol=0)


def test_plain_text_query_is_the_cirr_baseline(tv_engine, prompts, exp):
    r = prompts["rows"][0]
    vec = tv_engine.encode_query(None, r["caption"])  # TEXT alone, no mode: a plain CLIP text query
    np.testing.assert_allclose(vec, exp["baseline_text_features_normalized"][0], atol=ATOL_UNIT, rtol=0)


def test_training_loss(tv_engine, exp):
    from p2w.training.objective import pic2word_loss

    feats = torch.from_numpy(exp["image_features"])
    with torch.no_grad():
        parts = pic2word_loss(tv_engine.backbone, tv_engine.mapper, feats)
    np.testing.assert_allclose(parts.text_features.numpy(), exp["train_text_features"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(parts.logits_per_image.numpy(), exp["train_logits_per_image"], atol=ATOL, rtol=0)
    assert tv_engine.backbone.logit_scale == pytest.approx(float(exp["logit_scale_exp"]), abs=1e-5)
    assert float(parts.loss_img) == pytest.approx(float(exp["train_loss_img"]), abs=ATOL_UNIT)
    assert float(parts.loss_txt) == pytest.approx(float(exp["train_loss_txt"]), abs=ATOL_UNIT)
    assert float(parts.loss) == pytest.approx(float(exp["train_loss"]), abs=ATOL_UNIT)


def test_loss_gradient_reaches_only_the_mapper(tv, exp):
    import p2w
    from p2w.training.objective import pic2word_loss

    engine = p2w.load(
        model=str(tv / "open_clip_config.json"),
        pretrained=str(tv / "clip_state_dict.safetensors"),
        mapper=str(tv / "mapper.safetensors"),
        device="cpu",
    )
    engine.mapper.requires_grad_(True)
    parts = pic2word_loss(engine.backbone, engine.mapper, torch.from_numpy(exp["image_features"]))
    parts.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.mapper.parameters())
    assert all(p.grad is None for p in engine.backbone.model.parameters())
    assert float(parts.loss.detach()) == pytest.approx(float(exp["train_loss"]), abs=ATOL_UNIT)


def test_mixed_star_positions_are_per_row(tv_engine, prompts, exp, image_paths):
    quirk = prompts["quirk_mixed_star"]
    imgs = [image_paths[q["image_index"]] for q in quirk]
    got = np.stack(
        [tv_engine.encode_query(i, None, prompt=q["prompt"], normalize=False) for i, q in zip(imgs, quirk, strict=True)]
    )
    batched = _batch_of_prompts(tv_engine, imgs, [q["prompt"] for q in quirk])
    np.testing.assert_allclose(got, exp["quirk_mixed_per_row"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(batched, exp["quirk_mixed_per_row"], atol=ATOL, rtol=0)
    assert np.abs(batched - exp["quirk_mixed_official_batched"]).max() > 0.1  # the reference's bug is not copied


def _batch_of_prompts(engine, imgs, prompts):  # type: ignore[no-untyped-def]
    """One batch whose rows have different templates (and so different '*' positions)."""
    from p2w.core.compose import prompt_ids

    bb = engine.backbone
    with torch.inference_mode():
        tokens = engine.mapper(bb.encode_image(engine._pixels(imgs)))
        return bb.encode_text(prompt_ids(bb, prompts, need_star=True), tokens).numpy()


def test_official_checkpoint_gives_the_same_mapper(tv, tv_engine, exp):
    from p2w.mappers.files import read_mapper

    official = read_mapper(tv / "mapper_official.pt")
    plain = read_mapper(tv / "mapper.safetensors")
    for key, value in plain.mapper.state_dict().items():
        torch.testing.assert_close(official.mapper.state_dict()[key], value, atol=0, rtol=0)
    with torch.inference_mode():
        out = official.mapper(torch.from_numpy(exp["image_features"])).numpy()
    np.testing.assert_allclose(out, exp["mapped_tokens"], atol=ATOL, rtol=0)


def test_training_step_reproduces_the_reference_loss(tv, exp):
    """The code `p2w train` runs (TrainStep: planned text tower, global loss, AdamW) returns the golden loss."""
    import p2w
    from p2w.training.distributed import Dist
    from p2w.training.step import TrainStep, adamw

    engine = p2w.load(
        model=str(tv / "open_clip_config.json"),
        pretrained=str(tv / "clip_state_dict.safetensors"),
        mapper=str(tv / "mapper.safetensors"),
        device="cpu",
    )
    mapper = engine.mapper.requires_grad_(True).eval()  # eval: the golden loss has dropout off
    step = TrainStep(engine.backbone, mapper, mapper, adamw(mapper, 1e-4, 0.1), batch=8, d=Dist())
    feats = torch.from_numpy(exp["image_features"])
    first = float(step(feats, lr=1e-4))
    assert first == pytest.approx(float(exp["train_loss"]), abs=ATOL_UNIT)
    assert float(step(feats, lr=1e-4)) < first  # and it learns


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _slerp_formula(image: np.ndarray, text: np.ndarray, alpha: float) -> np.ndarray:
    """Jang et al.'s slerp, written from the paper's formula in float64: the angle between the unit vectors, and the
    sines of its parts."""
    v0, v1 = _unit(image.astype(np.float64)), _unit(text.astype(np.float64))
    theta = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    out = (np.sin((1 - alpha) * theta) * v0 + np.sin(alpha * theta) * v1) / np.sin(theta)
    return _unit(out)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_training_free_fusions_equal_their_formulas(tv_engine, prompts, exp, image_paths, alpha):
    """slerp and weighted on the reference's own image and text features (computed by the Pic2Word reference code,
    not by p2w): the slerp of the unit vectors, and WeiMoCIR's normalised weighted sum of the unnormalised ones."""
    for r in prompts["rows"]:
        i, img = r["row"], image_paths[r["image_index"]]
        text, template = baseline_args(r)
        image_ref = exp["image_features"][r["image_index"]]
        text_ref = exp["baseline_text_features"][i]
        got = tv_engine.encode_query(img, text, mode="slerp", prompt=template, alpha=alpha)
        np.testing.assert_allclose(got, _slerp_formula(image_ref, text_ref, alpha), atol=ATOL_UNIT, rtol=0)
        got = tv_engine.encode_query(img, text, mode="weighted", prompt=template, alpha=alpha)
        expected = _unit((1 - alpha) * image_ref.astype(np.float64) + alpha * text_ref.astype(np.float64))
        np.testing.assert_allclose(got, expected, atol=ATOL_UNIT, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 0.85, 1.0])
def test_pic2word_slerp_is_the_slerp_from_the_image_to_the_composed_vector(tv_engine, prompts, exp, image_paths, alpha):
    """p2w's composition of the families, on the reference's own image features and composed (Pic2Word) features."""
    for r in prompts["rows"]:
        i, img = r["row"], image_paths[r["image_index"]]
        text, template = query_args(r)
        got = tv_engine.encode_query(img, text, mode="pic2word-slerp", prompt=template, alpha=alpha)
        expected = _slerp_formula(exp["image_features"][r["image_index"]], exp["composed_features"][i], alpha)
        np.testing.assert_allclose(got, expected, atol=ATOL_UNIT, rtol=0)


def test_slerp_halfway_is_the_average(tv_engine, prompts, image_paths):
    """At alpha 0.5 the great circle's midpoint is the normalised sum of the two unit vectors: Pic2Word's average."""
    r = prompts["rows"][0]
    text, template = baseline_args(r)
    img = image_paths[r["image_index"]]
    half = tv_engine.encode_query(img, text, mode="slerp", prompt=template, alpha=0.5)
    np.testing.assert_allclose(half, tv_engine.encode_query(img, text, mode="average", prompt=template), atol=1e-6)
