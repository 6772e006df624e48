"""Backbone loading through the real paths (config files, weights files, tags in the cache) and text encoding."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import write_code_pickle
from p2w.core.backbone import Backbone
from p2w.core.checkpoints import read_state_dict
from p2w.errors import ModelLoadError, ModelUnavailableError, PromptError
from p2w.settings import Settings
from p2w.spec import BackboneSpec


@pytest.fixture(scope="module")
def bb(tiny) -> Backbone:
    return Backbone.load(BackboneSpec(str(tiny.config), str(tiny.weights)), device="cpu")


def test_dims_and_identity(bb, tiny):
    assert (bb.embed_dim, bb.token_width, bb.context_length) == (32, 48, 77)
    assert bb.id == tiny.backbone_id
    assert bb.id.startswith("tiny_clip-") and "/tiny_clip-" in bb.id
    assert bb.star_id == 265


def test_plain_text_equals_open_clip_encode_text(bb):
    ids = bb.tokenize(["a photo of a dog", "red", "a much longer sentence about a cat on a mat in the sun"])
    with torch.no_grad():
        ours = bb.encode_text(ids)
        reference = bb.model.encode_text(ids)  # open_clip's own path, full 77-token context
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_truncated_context_equals_full_context(bb, monkeypatch):
    ids = bb.tokenize(["a photo of * , with a red logo", "* on a table", "a * of"])
    tokens = torch.randn(3, bb.token_width)
    with torch.no_grad():
        short = bb.encode_text(ids, tokens)
        monkeypatch.setattr(Backbone, "_needed_length", lambda self, ids: ids.shape[1])
        full = bb.encode_text(ids, tokens)
    assert int(bb.tokenize(["a photo of * , with a red logo"]).argmax()) + 1 < 77  # truncation really happens
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)


def test_star_replaced_by_its_own_embedding_is_plain_text(bb):
    ids = bb.tokenize(["a photo of * , in red", "* on a table"])
    own = bb.model.token_embedding.weight[bb.star_id].expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(ids, own), bb.encode_text(ids), atol=1e-6, rtol=0)


def test_each_row_uses_its_own_star_position(bb):
    prompts = ["a photo of * , with stripes", "* on a wooden table", "a sculpture of a * in a museum"]
    tokens = torch.randn(3, bb.token_width)
    with torch.no_grad():
        batch = bb.encode_text(bb.tokenize(prompts), tokens)
        alone = torch.cat([bb.encode_text(bb.tokenize([p]), t[None]) for p, t in zip(prompts, tokens, strict=True)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)


def test_row_without_star_is_refused(bb):
    with pytest.raises(PromptError, match="exactly one"):
        bb.encode_text(bb.tokenize(["a photo of * ,", "no star here"]), torch.zeros(2, bb.token_width))


def test_openai_layout_with_module_prefix_and_wrapper(tmp_path, tiny, bb):
    state = read_state_dict(tiny.weights)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}
    wrapped["state_dict"].update(
        {
            "module.input_resolution": torch.tensor(32),
            "module.context_length": torch.tensor(77),
            "module.vocab_size": torch.tensor(49408),
        }
    )
    path = tmp_path / "openai_style.pt"
    torch.save(wrapped, path)
    other = Backbone.load(BackboneSpec(str(tiny.config), str(path)), device="cpu")
    pixels = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(other.encode_image(pixels), bb.encode_image(pixels), atol=1e-6, rtol=0)


def test_openai_checkpoint_forces_quick_gelu(tmp_path, tiny):
    from open_clip.transformer import QuickGELU

    cfg = json.loads(tiny.config.read_text())
    cfg["quick_gelu"] = False
    config = tmp_path / "gelu.json"
    config.write_text(json.dumps(cfg))
    plain = Backbone.load(BackboneSpec(str(config), str(tiny.weights)), device="cpu")
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())
    state = {**read_state_dict(tiny.weights), "input_resolution": torch.tensor(32)}
    marked = tmp_path / "openai.safetensors"
    save_file(state, str(marked))
    openai = Backbone.load(BackboneSpec(str(config), str(marked)), device="cpu")
    assert any(isinstance(m, QuickGELU) for m in openai.model.modules())


def test_weights_that_do_not_fit(tmp_path, tiny):
    state = read_state_dict(tiny.weights)
    del state["ln_final.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="missing key"):
        Backbone.load(BackboneSpec(str(tiny.config), str(path)), device="cpu")
    cfg = json.loads(tiny.config.read_text())
    cfg["text_cfg"]["width"] = 64
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not fit"):
        Backbone.load(BackboneSpec(str(wider), str(tiny.weights)), device="cpu")


def test_missing_and_bad_files(tmp_path, tiny):
    with pytest.raises(ModelUnavailableError, match="weights file not found"):
        Backbone.load(BackboneSpec(str(tiny.config), str(tmp_path / "w.safetensors")), device="cpu")
    with pytest.raises(ModelUnavailableError, match="model config file not found"):
        Backbone.load(BackboneSpec(str(tmp_path / "none.json"), str(tiny.weights)), device="cpu")
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(ModelLoadError, match="vision_cfg"):
        Backbone.load(BackboneSpec(str(bad), str(tiny.weights)), device="cpu")
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read model config"):
        Backbone.load(BackboneSpec(str(bad), str(tiny.weights)), device="cpu")
    with pytest.raises(ModelUnavailableError, match="tags only exist"):
        Backbone.load(BackboneSpec(str(tiny.config), "openai"), device="cpu")


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-L-14.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ViT-L-14/constants.pkl", b"")
        zf.writestr("ViT-L-14/data.pkl", b"")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        read_state_dict(path)


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_code_pickle(path, marker, key="state_dict")
    with pytest.raises(ModelLoadError, match="weights_only"):
        read_state_dict(path)
    assert not marker.exists()


def test_random_init_backbone(tiny):
    bb = Backbone.load(BackboneSpec(str(tiny.config), "none"), device="cpu")
    assert bb.id.endswith("/random")
    assert bb.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, 32)


# ---- open_clip pretrained tags, resolved from the Hugging Face cache ------------------------------------------------
@pytest.fixture
def registered_tag(tmp_path, tiny, monkeypatch):
    """Register the tiny config as open_clip model 'p2w-tiny' with a tag 'testtag' served from a hub repo id."""
    import open_clip
    from huggingface_hub import constants
    from open_clip import pretrained

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "p2w-tiny.json").write_text(tiny.config.read_text())
    open_clip.add_model_config(cfg_dir)
    monkeypatch.setitem(pretrained._PRETRAINED, "p2w-tiny", {"testtag": pretrained._pcfg(hf_hub="p2w-test/tiny-clip/")})
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _put_in_hub_cache(cache: Path, repo: str, filename: str, source: Path) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    target = folder / "snapshots" / revision / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    return target


def test_tag_loads_from_hub_cache_offline(registered_tag, tiny, bb):
    _put_in_hub_cache(registered_tag, "p2w-test/tiny-clip", "open_clip_model.safetensors", tiny.weights)
    tagged = Backbone.load(BackboneSpec("p2w-tiny", "testtag"), device="cpu")
    assert tagged.id == "p2w-tiny/testtag"
    pixels = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(tagged.encode_image(pixels), bb.encode_image(pixels), atol=0, rtol=0)


def test_tag_not_cached_offline_names_everything(registered_tag):
    with pytest.raises(ModelUnavailableError) as info:
        Backbone.load(BackboneSpec("p2w-tiny", "testtag"), device="cpu")
    msg = str(info.value)
    assert "p2w-tiny/testtag" in msg and str(registered_tag) in msg and "HF_HUB_OFFLINE" in msg
    assert "--pretrained PATH" in msg and "\n" not in msg


def test_tag_not_cached_and_hub_unreachable(registered_tag, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ModelUnavailableError, match=r"127\.0\.0\.1 cannot be reached .*HF_HUB_OFFLINE"):
        Backbone.load(BackboneSpec("p2w-tiny", "testtag"), device="cpu")


def test_large_weight_digests_are_cached_on_disk(tmp_path, monkeypatch, p2w_home):
    from p2w import digest

    monkeypatch.setattr(digest, "DISK_CACHE_MIN_BYTES", 10)
    monkeypatch.setattr(digest, "_DIGESTS", {})
    path = tmp_path / "big.safetensors"
    path.write_bytes(b"x" * 100)
    first = Settings.from_env().backbone("ViT-B-32", str(path)).id
    assert (p2w_home / "cache" / "digests.json").is_file()
    monkeypatch.setattr(digest, "_DIGESTS", {})  # a new process: only the disk cache is left
    monkeypatch.setattr(digest, "sha256_file", lambda p: pytest.fail("hashed again"))
    assert Settings.from_env().backbone("ViT-B-32", str(path)).id == first
    path.write_bytes(b"y" * 100)  # same size, new content and mtime: hashed anew
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    monkeypatch.setattr(digest, "sha256_file", lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
    assert BackboneSpec("ViT-B-32", str(path)).id != first
