"""Query modes and prompt templates, checked as invariants on a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
from open_clip import SimpleTokenizer

from p2w.core.compose import DEFAULT_ALPHA, DEFAULT_TEMPLATE, MAPPED, MEASURED_ALPHA, WEIGHED, fill, plan
from p2w.errors import MapperError, PromptError


@pytest.mark.parametrize(
    ("mode", "has_image", "has_text", "prompt", "expected"),
    [
        (None, True, True, None, ("pic2word", DEFAULT_TEMPLATE)),
        (None, True, False, None, ("image", DEFAULT_TEMPLATE)),
        (None, True, False, "a cartoon of *", ("pic2word", "a cartoon of *")),
        (None, False, True, None, ("text", "{text}")),
        ("text", False, True, None, ("text", DEFAULT_TEMPLATE)),
        ("average", True, True, "{text}", ("average", "{text}")),
        ("slerp", True, True, None, ("slerp", "{text}")),  # TEXT as written, as the authors encode it
        ("weighted", 2, True, "a photo of {text}", ("weighted", "a photo of {text}")),
        ("pic2word-slerp", True, True, None, ("pic2word-slerp", DEFAULT_TEMPLATE)),  # the mapper's template
    ],
)
def test_plan(mode, has_image, has_text, prompt, expected):
    qp = plan(mode, has_image, has_text, prompt)
    assert (qp.mode, qp.template) == expected
    assert (qp.alpha is None) == (mode not in WEIGHED)


def test_alpha_is_checked_and_defaults_per_backbone(monkeypatch):
    assert plan("slerp", True, True, alpha=0.25).alpha == 0.25
    assert plan("weighted", True, True).alpha == DEFAULT_ALPHA["weighted"]
    monkeypatch.setitem(MEASURED_ALPHA, "tiny/", {"slerp": 0.6})
    assert plan("slerp", True, True, backbone="tiny/abc").alpha == 0.6
    assert plan("slerp", True, True, backbone="other/abc").alpha == DEFAULT_ALPHA["slerp"]
    assert plan("weighted", True, True, backbone="tiny/abc").alpha == DEFAULT_ALPHA["weighted"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("pic2word", False, True, None), "needs a query image"),
        (("image", False, True, None), "needs a query image"),
        (("text", False, False, None), "needs TEXT"),
        (("pic2word", True, True, "a photo of {text}"), "no '\\*'"),
        (("magic", True, True, None), "unknown mode"),
        (("slerp", True, False, None), "needs TEXT"),
        (("weighted", False, True, None), "needs a query image"),
        (("pic2word-slerp", True, True, "a photo of {text}"), "no '\\*'"),
        (("pic2word-slerp", 2, True, None), "need a --prompt with one"),
    ],
)
def test_plan_refuses(args, match):
    with pytest.raises(PromptError, match=match):
        plan(*args)


@pytest.mark.parametrize(
    ("mode", "alpha", "match"),
    [("slerp", 1.5, "between 0"), ("weighted", -0.1, "between 0"), ("slerp", float("nan"), "between 0"),
     ("pic2word", 0.5, "not of mode pic2word"), ("pic2word-slerp", 1.01, "between 0"),
     ("average", 0.5, "not of mode average")],
)  # fmt: skip
def test_alpha_refusals(mode, alpha, match):
    with pytest.raises(PromptError, match=match):
        plan(mode, True, True, alpha=alpha)


def test_fill_slots_and_refusals():
    assert fill(DEFAULT_TEMPLATE, "with a red logo") == "a photo of * , with a red logo"
    assert fill("a cartoon of *", None) == "a cartoon of *"
    with pytest.raises(PromptError, match="no TEXT"):
        fill(DEFAULT_TEMPLATE, None)
    with pytest.raises(PromptError, match="no \\{text\\} slot"):
        fill("a cartoon of *", "in red")
    with pytest.raises(PromptError, match="contains '\\*'"):
        fill(DEFAULT_TEMPLATE, "a 5* hotel")
    assert fill(DEFAULT_TEMPLATE, "a 5* hotel", mode="text") == "a photo of * , a 5 * hotel"


@pytest.mark.parametrize(
    "template", ["a photo of *, {text}", "a photo of *. {text}", "(*) {text}", "a photo of*,{text}"]
)
def test_star_glued_to_punctuation_stays_a_token(template):
    tok = SimpleTokenizer()
    glued = tok.encode(template.replace("{text}", "in red"))
    assert 265 not in glued  # the tokenizer really merges '*' away ...
    assert tok.encode(fill(template, "in red")).count(265) == 1  # ... and fill() keeps it


def test_modes_are_what_they_claim(tiny_engine, images):
    e, img = tiny_engine, images[0]
    image = e.encode_images([img])[0]
    np.testing.assert_allclose(e.encode_query(img, None), image, atol=1e-6)
    np.testing.assert_allclose(e.encode_query(img, "in red", mode="image"), image, atol=1e-6)
    text = e.encode_query(None, "in red", mode="text")
    np.testing.assert_allclose(text, e.encode_texts(["a photo of * , in red"])[0], atol=1e-6)
    np.testing.assert_allclose(e.encode_query(None, "in red"), e.encode_texts(["in red"])[0], atol=1e-6)
    avg = e.encode_query(img, "in red", mode="average")
    expected = (image + text) / np.linalg.norm(image + text)
    np.testing.assert_allclose(avg, expected, atol=1e-6)
    composed = e.encode_query(img, "in red")
    assert np.linalg.norm(composed) == pytest.approx(1.0, abs=1e-6)
    assert np.abs(composed - text).max() > 1e-3  # the image really changes the query
    other = e.encode_query(images[1], "in red")
    assert np.abs(composed - other).max() > 1e-4


def test_raw_output_is_unnormalised(tiny_engine, images):
    raw = tiny_engine.encode_query(images[0], "in red", normalize=False)
    unit = tiny_engine.encode_query(images[0], "in red")
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)


def test_batch_equals_single_queries(tiny_engine, images):
    texts = ["in red", "with stripes", "as a shirt", "smaller"]
    batch = tiny_engine.encode_queries(images, texts)
    single = np.stack([tiny_engine.encode_query(i, t) for i, t in zip(images, texts, strict=True)])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_long_text_that_cuts_off_the_star(tiny_engine, images):
    long_text = " ".join(["red"] * 100)
    with pytest.raises(PromptError, match="cut off"):
        tiny_engine.encode_query(images[0], None, prompt=long_text + " of *")


def test_pic2word_needs_a_mapper(tiny, images):
    import p2w

    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), device="cpu")
    with pytest.raises(MapperError, match="--mapper"):
        engine.encode_query(images[0], "in red")
    assert engine.encode_query(images[0], "in red", mode="average").shape == (32,)
    assert engine.encode_query(images[0], "in red", mode="slerp").shape == (32,)  # the fusions need no mapper


@pytest.mark.parametrize("mode", WEIGHED)
def test_fusions_end_at_the_image_and_the_text(tiny_engine, images, mode):
    e = tiny_engine
    image = e.encode_images([images[0]])[0]
    text = e.encode_query(images[0], "in red") if mode in MAPPED else e.encode_texts(["in red"])[0]
    np.testing.assert_allclose(e.encode_query(images[0], "in red", mode=mode, alpha=0.0), image, atol=1e-6)
    np.testing.assert_allclose(e.encode_query(images[0], "in red", mode=mode, alpha=1.0), text, atol=1e-6)
    between = e.encode_query(images[0], "in red", mode=mode, alpha=0.5)
    assert float(between @ image) < 1 - 1e-3 and float(between @ text) < 1 - 1e-3


def test_fusions_of_several_images(tiny_engine, images):
    """slerp starts from the direction of the images' unit sum (what ``image`` mode gives), weighted from the mean
    of their unnormalised embeddings."""
    e, pair = tiny_engine, [images[0], images[1]]
    start = e.encode_query(pair, None, mode="image")
    text = e.encode_texts(["in red"])[0]
    got = e.encode_query(pair, "in red", mode="slerp", alpha=0.3)
    theta = np.arccos(np.clip(start @ text, -1, 1))
    expected = (np.sin(0.7 * theta) * start + np.sin(0.3 * theta) * text) / np.sin(theta)
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)
    raw = e.encode_images(pair, normalize=False).mean(axis=0)
    raw_text = e.encode_texts(["in red"], normalize=False)[0]
    expected = 0.7 * raw + 0.3 * raw_text
    got = e.encode_query(pair, "in red", mode="weighted", alpha=0.3)
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)


def test_empty_inputs_give_empty_arrays_of_the_right_width(tiny_engine):
    assert tiny_engine.encode_images([]).shape == (0, 32)
    assert tiny_engine.encode_queries([], []).shape == (0, 32)


def test_mismatched_lengths(tiny_engine, images):
    with pytest.raises(PromptError, match="one to one"):
        tiny_engine.encode_queries(images, ["in red"])


def _by_hand(engine, prompt: str, tokens) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The text tower run step by step on ``prompt`` with its i-th '*' embedding replaced by ``tokens[i]``: an
    independent computation of a composed query (open_clip's own modules, no p2w encoding code)."""
    import torch

    model = engine.backbone.model
    ids = engine.backbone.tokenize([prompt])  # (1, ctx)
    with torch.no_grad():
        x = model.token_embedding(ids).clone()
        stars = (ids[0] == engine.backbone.star_id).nonzero()[:, 0].tolist()
        assert len(stars) == len(tokens)
        for pos, tok in zip(stars, tokens, strict=True):
            x[0, pos] = tok
        x = x + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[0, ids[0].argmax()] @ model.text_projection
    out = x.numpy()
    return out / np.linalg.norm(out)


def test_several_images_fill_the_stars_in_order(tiny_engine, images):
    """The i-th '*' takes the i-th image's token (the reference's tuple path), equal to a by-hand computation."""
    import torch

    e = tiny_engine
    prompt = "a * wearing the hat of *"
    feats = torch.from_numpy(e.encode_images(images[:2], normalize=False))
    with torch.no_grad():
        tokens = e.mapper(feats)  # (2, token_width)
    ab = e.encode_query(images[:2], None, prompt=prompt)
    ba = e.encode_query([images[1], images[0]], None, prompt=prompt)
    np.testing.assert_allclose(ab, _by_hand(e, prompt, tokens), atol=1e-5)
    np.testing.assert_allclose(ba, _by_hand(e, prompt, tokens.flip(0)), atol=1e-5)
    assert np.abs(ab - ba).max() > 1e-4  # order matters
    with_text = e.encode_query(images[:2], "in red", prompt="a * and a * , {text}")
    np.testing.assert_allclose(with_text, _by_hand(e, "a * and a * , in red", tokens), atol=1e-5)
    # a batch of two-image queries equals its single queries; from features equals from images
    batch = e.encode_queries([images[:2], images[2:4]], [None, None], prompt=prompt)
    np.testing.assert_allclose(batch[0], ab, atol=1e-5)
    np.testing.assert_allclose(e.encode_query_features(feats, None, prompt=prompt), ab, atol=1e-5)
    # one image, one star: as before
    np.testing.assert_allclose(e.encode_query([images[0]], "in red"), e.encode_query(images[0], "in red"), atol=0)


def test_baselines_with_several_images(tiny_engine, images):
    e = tiny_engine
    a, b = e.encode_images(images[:2])
    text = e.encode_query(None, "in red", mode="text", prompt="{text}")
    avg = e.encode_query(images[:2], "in red", mode="average", prompt="{text}")
    np.testing.assert_allclose(avg, (a + b + text) / np.linalg.norm(a + b + text), atol=1e-5)
    img = e.encode_query(images[:2], None, mode="image")
    np.testing.assert_allclose(img, (a + b) / np.linalg.norm(a + b), atol=1e-5)


@pytest.mark.parametrize(
    ("count", "prompt", "match"),
    [
        (2, None, "2 query images need a --prompt with one '\\*' each"),
        (2, "a photo of * , {text}", "has 1 '\\*' but 2 images"),
        (1, "a * and a *", "needs exactly one"),
        (0, "a * and a *", "needs a query image"),
    ],
)
def test_star_and_image_counts_must_agree(tiny_engine, images, count, prompt, match):
    with pytest.raises(PromptError, match=match):
        tiny_engine.encode_query(
            images[:count] if count != 1 else images[0],
            "in red" if prompt is None else None,
            mode="pic2word",
            prompt=prompt,
        )
