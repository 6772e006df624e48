"""SEARLE's and LinCIR's mappers: files in each method's own checkpoint layout (tiny dims), through the real import
path, and composed vectors equal to an independent computation from the methods' formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from p2w.cli import app
from p2w.mappers.methods import THAT

runner = CliRunner()


def _phi_state(seed: int, d: int = 32, w: int = 48) -> dict[str, torch.Tensor]:
    """A phi state dict with SEARLE's/LinCIR's keys (``layers.{0,3,6}``), hidden 4d, random weights."""
    g = torch.Generator().manual_seed(seed)
    h = 4 * d
    shapes = {"layers.0": (h, d), "layers.3": (h, h), "layers.6": (w, h)}
    state = {}
    for name, (out, inp) in shapes.items():
        state[f"{name}.weight"] = torch.randn(out, inp, generator=g) / math.sqrt(inp)
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.1
    return state


def _checkpoint(path: Path, method: str, state: dict[str, torch.Tensor]) -> Path:
    """The file each method's training code writes: ``{'epoch': N, 'Phi': state_dict}`` (LinCIR's 'epoch' holds the
    step; SEARLE's full checkpoints also carry the optimiser, which readers ignore)."""
    obj: dict[str, object] = {"epoch": 20000 if method == "lincir" else 5, "Phi": state}
    if method == "searle":
        obj["optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1, 2, 3, 4, 5]}]}
    torch.save(obj, path)
    return path


def _phi_by_hand(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """phi from its formula: Linear, exact GELU, Linear, exact GELU, Linear (dropout is off at evaluation)."""

    def gelu(v: np.ndarray) -> np.ndarray:
        return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))

    def linear(v: np.ndarray, name: str) -> np.ndarray:
        return v @ state[f"{name}.weight"].double().numpy().T + state[f"{name}.bias"].double().numpy()

    return linear(gelu(linear(gelu(linear(x.astype(np.float64), "layers.0")), "layers.3")), "layers.6")


def _text_by_hand(engine, prompt: str, token: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """CLIP's text tower step by step with the '*' token embedding replaced by ``token`` (as SEARLE's and LinCIR's
    encode_with_pseudo_tokens do), pooled at end-of-text, projected, normalised."""
    model = engine.backbone.model
    ids = engine.backbone.tokenize([prompt])
    with torch.no_grad():
        x = model.token_embedding(ids).clone()
        x[ids == engine.backbone.star_id] = torch.from_numpy(token).float()
        x = x + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        out = (x[0, ids[0].argmax()] @ model.text_projection).numpy()
    return out / np.linalg.norm(out)


@pytest.mark.parametrize("method", ["searle", "lincir"])
def test_checkpoint_imports_and_composes_as_the_method_defines(method, tiny, images, tmp_path):
    import p2w

    state = _phi_state(3 if method == "searle" else 4)
    ckpt = _checkpoint(tmp_path / f"{method}.pt", method, state)
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    done = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", method, "--method", method, *backbone])
    assert done.exit_code == 0, done.stderr
    listed = {m["name"]: m for m in json.loads(runner.invoke(app, ["mapper", "list", "--json"]).stdout)}
    assert listed[method]["method"] == method and listed[method]["backbone"] == tiny.backbone_id
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=method, device="cpu")
    assert engine.default_prompt == THAT == "a photo of * that {text}"
    composed = engine.encode_query(str(images[0]), "in red")  # the method's own template, by default
    feats = engine.image_features([str(images[0])])[0].numpy()  # unnormalised, as both methods feed phi
    token = _phi_by_hand(state, feats)
    np.testing.assert_allclose(composed, _text_by_hand(engine, "a photo of * that in red", token), atol=1e-5)
    # the CLI says which template it used, and --prompt still wins
    out = runner.invoke(app, ["embed", "query", str(images[0]), "in red", "--mapper", method, *backbone])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)[0]["prompt"] == THAT
    other = engine.encode_query(str(images[0]), "in red", prompt="a photo of * , {text}")
    np.testing.assert_allclose(other, _text_by_hand(engine, "a photo of * , in red", token), atol=1e-5)


def test_a_phi_file_must_say_whose_it_is(tiny, tmp_path):
    ckpt = _checkpoint(tmp_path / "phi.pt", "lincir", _phi_state(5))
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    done = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "x", *backbone])
    assert done.exit_code == 1 and "--method searle or --method lincir" in done.stderr
    wrong = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "x", "--method", "pic2word", *backbone])
    assert wrong.exit_code == 1 and "phi network, not pic2word's" in wrong.stderr
    unknown = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "x", "--method", "magic", *backbone])
    assert unknown.exit_code == 1 and "unknown method 'magic'" in unknown.stderr


def test_eval_uses_the_methods_templates_for_its_benchmarks(tiny, tmp_path):
    import p2w
    from p2w.evaluation.common import template_for

    ckpt = _checkpoint(tmp_path / "s.pt", "searle", _phi_state(6))
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    assert (
        runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "s", "--method", "searle", *backbone]).exit_code
        == 0
    )
    searle = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper="s", device="cpu")
    pic2word = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    for bench in ("fashioniq", "cirr", "circo"):
        assert template_for(searle, bench, "pic2word", "a photo of * , {text}") == THAT
        assert template_for(pic2word, bench, "pic2word", "a photo of * , {text}") == "a photo of * , {text}"
        assert template_for(searle, bench, "text", "{text}") == "{text}"  # baselines keep the benchmark's own
        assert template_for(searle, bench, "pic2word", "x", prompt="a * {text}") == "a * {text}"
    assert template_for(searle, "imagenet-r", "pic2word", "a sketch of *") == "a sketch of *"


def test_known_entries_name_their_sources():
    from p2w.mappers.registry import KNOWN

    assert KNOWN["lincir-vit-l-14"].source == "hf://navervision/zeroshot-cir-models/lincir_large.pt"
    assert KNOWN["searle-vit-b-32"].source.endswith("/SEARLE_ViT-B32.pt")
    assert KNOWN["searle-vit-l-14"].source.endswith("/SEARLE_ViT-L14.pt")
    assert {KNOWN[n].method for n in KNOWN} == {"pic2word", "searle", "lincir"}


def test_target_pad_is_searles_padding():
    from PIL import Image

    from p2w.core.images import target_pad

    wide = target_pad(Image.new("RGB", (100, 40), "white"))  # ratio 2.5: black bands above and below
    assert wide.size == (100, 80) and wide.getpixel((50, 5)) == (0, 0, 0) and wide.getpixel((50, 40)) == (255, 255, 255)
    tall = target_pad(Image.new("L", (30, 90), 255))
    assert tall.size == (30 + 2 * 21, 90)  # side 90 / 1.25 = 72: 21 a side
    squareish = Image.new("RGB", (50, 45))
    assert target_pad(squareish) is squareish  # under the ratio: as it is


def test_eval_preprocess_targetpad_pads_query_and_gallery_images(tiny, tmp_path, p2w_home):
    """--preprocess targetpad: benchmark images are padded before the backbone's own transform (cached apart from
    the plain features); only the benchmarks SEARLE evaluates take it."""
    from PIL import Image

    import p2w
    from p2w.core.images import target_pad
    from p2w.evaluation.common import image_features

    wide = tmp_path / "wide.png"
    Image.radial_gradient("L").resize((120, 40)).convert("RGB").save(wide)
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=None, device="cpu")
    plain = image_features(engine, [wide], p2w_home, workers=0)[str(wide)]
    padded = image_features(engine, [wide], p2w_home, workers=0, preprocess="targetpad")[str(wide)]
    with Image.open(wide) as im:
        expected = engine.backbone.encode_image(engine.backbone.preprocess(target_pad(im.convert("RGB")))[None])[0]
    np.testing.assert_allclose(padded, expected.detach().numpy(), atol=1e-5)
    assert np.abs(padded - plain).max() > 1e-3
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    refused = runner.invoke(app, ["eval", "coco", "--data", str(tmp_path), *backbone, "--preprocess", "targetpad"])
    assert refused.exit_code == 1 and "coco takes no --preprocess" in refused.stderr
    bad = runner.invoke(app, ["eval", "cirr", "--data", str(tmp_path), *backbone, "--preprocess", "squash"])
    assert bad.exit_code == 1
