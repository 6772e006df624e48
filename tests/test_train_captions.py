"""`p2w train --captions`: LinCIR's text-only objective on the tiny random CLIP — caption files, keyword spans, the
objective against an independent computation, learning, caching, resuming, mixing with images, no image read."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core.backbone import Backbone
from p2w.errors import P2WError, TrainingInterrupted
from p2w.mappers.files import read_mapper
from p2w.mappers.network import Phi
from p2w.spec import BackboneSpec
from p2w.training import caption_set
from p2w.training.caption_set import load_captions
from p2w.training.captions import read_captions
from p2w.training.config import TrainConfig
from p2w.training.distributed import Dist
from p2w.training.keywords import STOPWORD_RULE, clean, keyword_rule, spacy_rule, stopword_rule
from p2w.training.loop import train
from p2w.training.objective import lincir_loss
from p2w.training.schedule import caption_steps, default_warmup
from training_runs import assert_same_run, two_and_one_process

runner = CliRunner()
COLOURS = ("red", "blue", "green", "yellow", "black", "white")
THINGS = ("dress", "shirt", "dog", "car", "hat", "shoe", "bag")
CAPTIONS = [f"A {c} {t} on the {p}." for c in COLOURS for t in THINGS for p in ("beach", "street")]  # 84


@pytest.fixture
def captions(tmp_path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return path


def config(tiny, captions, **kw) -> TrainConfig:
    base = {
        "captions": str(captions),
        "name": "c",
        "model": str(tiny.config),
        "pretrained": str(tiny.weights),
        "device": "cpu",
        "batch_size": 16,
        "max_steps": 12,
        "lr": 1e-3,
        "warmup": 2,
        "hidden_dim": 32,
        "dropout": 0.0,
        "workers": 0,
        "keywords": "rule",
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = np.zeros((32, 32, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        pixels[8:20, 8:20] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
    return root


# ---- caption files --------------------------------------------------------------------------------------------


def test_caption_file_formats(tmp_path):
    plain = tmp_path / "c.txt"
    plain.write_text("a red dress\n\n  a blue shirt  \n# a hashtag caption\n", encoding="utf-8")
    assert [(c.line, c.text) for c in read_captions(plain)] == [
        (1, "a red dress"),
        (3, "a blue shirt"),
        (4, "# a hashtag caption"),
    ]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"caption": "a red dress", "id": 1}\n\n{"text": "a blue shirt"}\n', encoding="utf-8")
    assert [(c.line, c.text) for c in read_captions(jsonl)] == [(1, "a red dress"), (3, "a blue shirt")]
    cc3m = tmp_path / "cc3m.csv"  # the Pic2Word reference's CSV: filepath<TAB>title
    cc3m.write_text('filepath\ttitle\nimg/1.jpg\ta "quoted" dog\nimg/2.jpg\ta cat\n', encoding="utf-8")
    assert [c.text for c in read_captions(cc3m)] == ['a "quoted" dog', "a cat"]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\tcaption\n1\ta red dress\n", encoding="utf-8")
    assert [c.text for c in read_captions(tsv)] == ["a red dress"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "caption file not found"),
        ("empty.txt", "\n  \n", "no captions in"),
        ("bad.jsonl", '{"caption": "ok"}\n{"title": "no field"}\n', r"bad.jsonl line 2: no 'caption' or 'text'"),
        ("notjson.jsonl", '{"caption": "ok"}\n\nnot json\n', "notjson.jsonl line 3: not JSON"),
        ("number.jsonl", '{"caption": 3}\n', "line 1: no 'caption' or 'text' field with a string"),
        ("nocol.csv", "filepath\turl\na.jpg\tb\n", "'title' or 'caption'"),
        ("latin1.txt", b"caf\xe9 au lait\n", "cannot read caption file"),
    ],
)
def test_caption_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(P2WError, match=message) as err:
        read_captions(path)
    assert "\n" not in str(err.value)


def test_a_folder_is_not_a_caption_file(tmp_path):
    with pytest.raises(P2WError, match="is a folder"):
        read_captions(tmp_path)


# ---- keyword spans --------------------------------------------------------------------------------------------


def test_cleaning_is_lincirs():
    assert clean("  A *Red*  Dress ON the Beach. ") == "a red dress on the beach."


def test_stopword_rule_replaces_every_maximal_run():
    rule = stopword_rule()
    assert rule.name == STOPWORD_RULE
    cases = {
        "a red dress on the beach.": "* on * .",
        "a man riding a horse next to two dogs": "* riding * next to two *",
        "a photo of a red t-shirt , in blue.": "* of * , in * .",
        "the building is tall and the man's hat is red": "* is * and * is *",
        "something red.": "something * .",
    }
    assert rule.replace(list(cases), seed=0) == list(cases.values())
    assert rule.replace(["...", ""], seed=0) == ["", ""]  # no word: nothing to train on


def test_fallback_word_is_seeded():
    rule = stopword_rule()
    caption = "it is on and off with them over there"  # only function words: one random word becomes '*'
    first = rule.replace([caption] * 3, seed=0)
    assert first == rule.replace([caption], seed=0) * 3  # the same caption, the same word, on every call
    assert all(r.count("*") == 1 for r in first)
    by_seed = {rule.replace([caption], seed=s)[0] for s in range(20)}
    assert len(by_seed) > 1  # the seed chooses the word


def test_spacy_rule_when_spacy_is_installed():
    pytest.importorskip("spacy", reason="spaCy is not installed (the optional extra p2w[spacy])")
    rule = spacy_rule()
    if rule is None:
        pytest.skip("spaCy's en_core_web_sm model is not installed")
    assert rule.name == "spacy en_core_web_sm"
    assert keyword_rule("auto").name == rule.name
    assert rule.replace(["a red dress on the beach."], seed=0) == ["* on * ."]


def test_auto_falls_back_to_the_rule_without_spacy(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` raises ImportError
    assert keyword_rule("auto").name == STOPWORD_RULE


# ---- the objective --------------------------------------------------------------------------------------------


def by_hand_text(model, ids: torch.Tensor, tokens: torch.Tensor | None, star_id: int) -> torch.Tensor:
    """open_clip's text tower over all 77 positions, with ``tokens[i]`` at every '*' of row i, as LinCIR runs it."""
    x = model.token_embedding(ids)
    if tokens is not None:
        x = torch.where((ids == star_id)[..., None], tokens[:, None, :], x)
    x = x + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ model.text_projection


def test_objective_equals_an_independent_computation(tiny, captions, p2w_home):
    bb = Backbone.load(BackboneSpec(str(tiny.config), str(tiny.weights)), device="cpu")
    data = load_captions(bb, captions, stopword_rule(), 0, p2w_home, Dist())
    assert len(data) == len(CAPTIONS) and data.t is not None
    rows = torch.tensor([0, 5, 17, 40, 83])
    texts = [clean(CAPTIONS[r]) for r in rows.tolist()]
    replaced = stopword_rule().replace(texts, 0)
    assert replaced[0] == "* on * ." and all(r.count("*") == 2 for r in replaced)
    with torch.no_grad():
        t77 = by_hand_text(bb.model, bb.tokenizer(texts), None, bb.star_id)  # the caption's own t, 77 positions
        torch.testing.assert_close(data.t[rows], t77, atol=1e-5, rtol=0)  # the cache holds the same t
        torch.manual_seed(0)
        phi = Phi(bb.embed_dim, bb.token_width, 32).eval()
        batch = data.batch(bb, rows)
        assert batch.plan.ids.shape[1] < 77  # trimmed to the replaced captions' real length
        torch.manual_seed(7)
        loss = lincir_loss(bb, phi, batch.t, batch.plan, noise=1.0)
        torch.manual_seed(7)
        x = t77 + torch.rand(len(rows), 1) * torch.randn_like(t77)  # U(0,1) per row times N(0, I)
        expected = F.mse_loss(by_hand_text(bb.model, bb.tokenizer(replaced), phi(x), bb.star_id), t77)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    assert abs(float(loss) - float(expected)) <= 1e-5


# ---- training -------------------------------------------------------------------------------------------------


def test_short_run_trains_and_registers_a_lincir_mapper(tiny, captions, p2w_home):
    result = train(config(tiny, captions, name="learns", max_steps=30, dropout=0.0))
    losses = result.step_losses
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses  # ~1.0 -> ~0.5
    assert result.objective == "lincir" and result.captions == len(CAPTIONS) and result.images == 0
    mf = read_mapper(p2w_home / "mappers" / "learns.safetensors")
    assert isinstance(mf.mapper, Phi) and mf.mapper.hidden_dim == 32
    meta = mf.metadata
    assert (meta["method"], meta["network"], meta["objective"]) == ("lincir", "phi", "lincir")
    assert meta["keywords"] == STOPWORD_RULE and meta["backbone"] == tiny.backbone_id
    import p2w

    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper="learns", device="cpu")
    assert engine.encode_query(Image.new("RGB", (32, 32), "red"), "in blue").shape == (32,)


def test_lincir_defaults():
    cfg = TrainConfig(captions="c.txt").with_defaults()
    assert (cfg.network, cfg.hidden_dim, cfg.dropout) == ("phi", None, 0.5)  # hidden None: 4 x embed_dim
    assert (cfg.lr, cfg.weight_decay, cfg.schedule) == (1e-4, 0.01, "constant")
    assert (cfg.batch_size, cfg.noise) == (256, 1.0)
    assert (cfg.max_steps, cfg.epochs, cfg.warmup) == (None, None, None)  # the caption file's size decides
    images = TrainConfig(data="imgs").with_defaults()
    assert (images.network, images.hidden_dim, images.dropout, images.weight_decay) == ("pic2word", 512, 0.1, 0.1)
    assert (images.batch_size, images.epochs, images.max_steps, images.schedule) == (128, 10, None, "cosine")
    assert TrainConfig(data="imgs", captions="c.txt").with_defaults().network == "phi"
    assert TrainConfig(captions="c.txt", epochs=3).with_defaults().max_steps is None  # the epochs decide


def test_default_length_fits_the_caption_file():
    """4 epochs, at least 1,000 and at most LinCIR's 50,000 steps; the warm-up 10% of that, at most LinCIR's 500."""
    per_epoch = {3_200: 12, 400_000: 1_562, 3_318_333: 12_962}  # captions // 256
    assert {n: caption_steps(k) for n, k in per_epoch.items()} == {3_200: 1_000, 400_000: 6_248, 3_318_333: 50_000}
    assert [default_warmup(t, with_captions=True) for t in (1_000, 6_248, 50_000)] == [100, 500, 500]
    assert [default_warmup(t, with_captions=False) for t in (30, 200_000)] == [3, 10_000]  # Pic2Word's, as before


def test_a_default_run_on_a_small_file_says_its_length(tiny, tmp_path, p2w_home, monkeypatch):
    """3,200 captions, every length option at its default: 1,000 steps (not 50,000), said when training starts, and
    how long they take once the first steps are measured."""
    monkeypatch.setattr("p2w.training.loop.REPORT_EVERY", 5)
    path = tmp_path / "many.txt"
    lines = [f"A {CAPTIONS[i % len(CAPTIONS)][2:-1]} number {i}." for i in range(3_200)]  # 12 steps of 256 a pass
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stages: list[str] = []

    class Record:
        def stage(self, text):  # type: ignore[no-untyped-def]
            stages.append(text)

        def progress(self, stage, done, total): ...
        def epoch(self, summary): ...
        def step(self, step, total, loss, lr, rate):  # type: ignore[no-untyped-def]
            if step == 10:
                os.kill(os.getpid(), signal.SIGINT)  # 10 steps are enough to see the plan

    cfg = config(tiny, path, name="default-length", batch_size=None, max_steps=None, warmup=None)
    with pytest.raises(TrainingInterrupted, match=r"step 10/1000;"):
        train(cfg, callbacks=Record())
    assert "training 1,000 steps: 83.3 epochs of 3,200 captions, 256 a step" in stages, stages
    estimate = [s for s in stages if s.startswith("about ")]
    assert len(estimate) == 1, stages
    pattern = r"about \d+ (s|min|h) left: 990 more steps at \S+ s a step \(measured over steps 5-10\)"
    assert re.fullmatch(pattern, estimate[0]), estimate
    ckpt = torch.load(p2w_home / "runs" / "default-length" / "checkpoint.pt", weights_only=True)
    assert (ckpt["config"]["max_steps"], ckpt["config"]["warmup"]) == (None, None)  # a resume decides the same


def test_cached_and_uncached_give_the_same_losses(tiny, captions):
    cached = train(config(tiny, captions, name="cached", dropout=0.5))
    live = train(config(tiny, captions, name="live", dropout=0.5, cache=False))  # t encoded at every step
    np.testing.assert_allclose(cached.step_losses, live.step_losses, atol=1e-5)


def test_second_run_computes_nothing_again(tiny, captions, monkeypatch):
    train(config(tiny, captions, name="first", max_steps=2))

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a cached caption feature or replaced caption was computed again")

    monkeypatch.setattr(caption_set, "_features", fail)
    monkeypatch.setattr(caption_set, "_replaced_ids", fail)
    assert train(config(tiny, captions, name="second", max_steps=2)).captions == len(CAPTIONS)


def test_resume_continues_exactly(tiny, captions, p2w_home, monkeypatch):
    monkeypatch.setattr("p2w.training.loop.REPORT_EVERY", 1)
    straight = train(config(tiny, captions, name="straight", dropout=0.5))

    class StopAtStep5:
        def stage(self, text): ...
        def progress(self, stage, done, total): ...
        def epoch(self, summary): ...
        def step(self, step, total, loss, lr, rate):  # type: ignore[no-untyped-def]
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = config(tiny, captions, name="resumed", dropout=0.5)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, callbacks=StopAtStep5())
    resumed = train(replace(cfg, resume=True))
    np.testing.assert_allclose(resumed.step_losses, straight.step_losses, atol=1e-6)  # noise and dropout too
    a = read_mapper(p2w_home / "mappers" / "straight.safetensors").mapper.state_dict()
    b = read_mapper(p2w_home / "mappers" / "resumed.safetensors").mapper.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    with pytest.raises(P2WError, match="changed: noise"):
        train(replace(cfg, resume=True, noise=0.5))


@pytest.mark.parametrize("mix", ["alternate", "sum"])
def test_images_and_captions_together(tiny, captions, photos, p2w_home, mix):
    result = train(config(tiny, captions, data=str(photos), name=f"mixed-{mix}", mix=mix, batch_size=8))
    assert result.objective == "mixed" and result.images == 16 and result.captions == len(CAPTIONS)
    assert len(result.step_losses) == 12 and all(np.isfinite(result.step_losses))
    meta = read_mapper(p2w_home / "mappers" / f"mixed-{mix}.safetensors").metadata
    assert (meta["method"], meta["objective"], meta["mix"], meta["network"]) == ("lincir", "mixed", mix, "phi")
    assert meta["trained_on"] == f"photos + {captions.name}"


def test_pic2word_network_on_captions(tiny, captions, p2w_home):
    train(config(tiny, captions, name="p2wnet", network="pic2word", max_steps=2))
    mf = read_mapper(p2w_home / "mappers" / "p2wnet.safetensors")
    assert mf.metadata["network"] == "pic2word" and mf.metadata["method"] == "lincir"


def test_no_image_is_opened_with_captions_alone(tiny, captions, monkeypatch):
    def no_images(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an image was opened in a caption-only run")

    import p2w.core.features
    import p2w.core.images
    import p2w.training.trainset

    for module in (p2w.core.images, p2w.core.features, p2w.training.trainset):
        monkeypatch.setattr(module, "open_image", no_images)
    monkeypatch.setattr(Image, "open", no_images)
    assert train(config(tiny, captions, name="textonly", max_steps=3)).captions == len(CAPTIONS)


def test_cli_train_captions_json_and_errors(tiny, captions, p2w_home, tmp_path):
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    common = ["--batch-size", "16", "--max-steps", "4", "--hidden-dim", "16", "--keywords", "rule", "--json"]
    result = runner.invoke(app, ["train", "--captions", str(captions), "--name", "cli", *backbone, *common])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["objective"] == "lincir" and summary["captions"] == len(CAPTIONS)
    assert summary["keywords"] == STOPWORD_RULE and "keywords: rule: p2w stop-words" in result.stderr
    missing = runner.invoke(app, ["train", "--captions", str(tmp_path / "nope.txt"), *backbone])
    assert missing.exit_code == 1 and missing.stderr.strip().count("\n") == 0
    assert "caption file not found" in missing.stderr
    nothing = runner.invoke(app, ["train", *backbone])
    assert nothing.exit_code == 1 and "--data, --embeddings or --captions is required" in nothing.stderr


@pytest.mark.slow
def test_two_process_gloo_agrees_with_one_process(tiny, captions, tmp_path):
    common = ["train", "--captions", str(captions), "--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    common += ["--device", "cpu", "--max-steps", "10", "--hidden-dim", "16", "--dropout", "0", "--noise", "0"]
    common += ["--lr", "1e-3", "--keywords", "rule", "--json"]
    ddp, single = two_and_one_process(common, tmp_path / "home", batch=8, port=29534)
    assert_same_run(ddp, single)
