"""Mapper files: metadata, fit checks, the reference checkpoint format, import into the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import p2w
from conftest import write_code_pickle
from p2w.cli import app
from p2w.errors import MapperError
from p2w.mappers.files import check_fits, read_mapper, save_mapper
from p2w.mappers.network import Mapper

runner = CliRunner()


def official_checkpoint(path: Path, mapper: Mapper, ddp: bool = True) -> Path:
    """A checkpoint laid out as the reference ``src/main.py`` saves it."""
    prefix = "module." if ddp else ""
    torch.save(
        {
            "epoch": 1,
            "name": "test",
            "state_dict": {prefix + "logit_scale": torch.tensor(2.0)},
            "state_dict_img2text": {prefix + k: v for k, v in mapper.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0, 1]}]},
        },
        path,
    )
    return path


def test_save_records_metadata_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = Mapper(32, 48, hidden_dim=16, n_layer=3)
    path = tmp_path / "m.safetensors"
    save_mapper(m, path, "tiny/test")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "tiny/test" and meta["format"] == "p2w-mapper"
    assert (meta["embed_dim"], meta["hidden_dim"], meta["token_width"], meta["n_layer"]) == ("32", "16", "48", "3")
    assert meta["p2w_version"] == p2w.__version__
    back = read_mapper(path)
    assert back.backbone == "tiny/test" and back.mapper.n_layer == 3
    x = torch.randn(4, 32)
    torch.testing.assert_close(back.mapper(x), m.eval()(x), atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("ddp", [True, False])
def test_reference_checkpoint_is_read(tmp_path, ddp):
    m = Mapper(32, 48, hidden_dim=16)
    mf = read_mapper(official_checkpoint(tmp_path / "ckpt.pt", m, ddp=ddp))
    assert mf.backbone is None
    for key, value in m.state_dict().items():
        assert torch.equal(mf.mapper.state_dict()[key], value)


def test_fit_checks():
    from p2w.mappers.files import MapperFile

    m = MapperFile(Mapper(32, 48, hidden_dim=16), Path("m.safetensors"), {"backbone": "a/b"})
    check_fits(m, "a/b", 32, 48)
    with pytest.raises(MapperError, match="32-d image features to 48-d tokens"):
        check_fits(m, "a/b", 64, 48, force=True)  # dims can never be forced
    with pytest.raises(MapperError, match="--force-mapper"):
        check_fits(m, "c/d", 32, 48)
    check_fits(m, "c/d", 32, 48, force=True)


def test_load_refuses_a_mapper_of_another_backbone_before_building_the_model(tiny, tmp_path):
    other = tmp_path / "other.safetensors"
    save_mapper(Mapper(32, 48, hidden_dim=16), other, "ViT-L-14/openai")
    with pytest.raises(MapperError, match="made for backbone ViT-L-14/openai"):
        p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(other), device="cpu")
    engine = p2w.load(
        model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(other), device="cpu", force_mapper=True
    )
    assert engine.mapper is not None


def test_wrong_dims_refused(tiny, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_mapper(Mapper(64, 48, hidden_dim=16), wrong, "whatever")
    with pytest.raises(MapperError, match="64-d image features"):
        p2w.load(
            model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(wrong), device="cpu", force_mapper=True
        )


def test_not_a_mapper(tiny, tmp_path):
    with pytest.raises(MapperError, match="not a Pic2Word mapper"):
        read_mapper(tiny.weights)
    with pytest.raises(MapperError, match="not found"):
        read_mapper(tmp_path / "missing.pt")


def test_mapper_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    write_code_pickle(evil, marker, key="state_dict_img2text")
    with pytest.raises(MapperError, match="weights_only"):
        read_mapper(evil)
    assert not marker.exists()


def test_cli_import_then_use_by_name(tiny, tmp_path, images, p2w_home):
    torch.manual_seed(3)
    ckpt = official_checkpoint(tmp_path / "official.pt", Mapper(32, 48, hidden_dim=16))
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    result = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "mine", *backbone])
    assert result.exit_code == 0, result.stderr
    stored = p2w_home / "mappers" / "mine.safetensors"
    assert result.stdout.strip() == str(stored)
    assert read_mapper(stored).backbone == tiny.backbone_id
    again = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "mine", *backbone])
    assert again.exit_code == 1 and "exists already" in again.stderr
    assert runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "mine", "--force", *backbone]).exit_code == 0
    query = runner.invoke(app, ["embed", "query", str(images[0]), "in blue", "--mapper", "mine", *backbone])
    assert query.exit_code == 0, query.stderr
    unknown = runner.invoke(app, ["embed", "query", str(images[0]), "in blue", "--mapper", "theirs", *backbone])
    assert unknown.exit_code == 1 and "mine" in unknown.stderr and "p2w mapper import" in unknown.stderr


def test_cli_import_refuses_mapper_of_other_dims(tiny, tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt", Mapper(768, 768, hidden_dim=16))
    result = runner.invoke(
        app,
        [
            "mapper",
            "import",
            str(ckpt),
            "--name",
            "big",
            "--model",
            str(tiny.config),
            "--pretrained",
            str(tiny.weights),
        ],
    )
    assert result.exit_code == 1 and "768-d" in result.stderr


def test_cli_import_bad_name(tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt", Mapper(768, 768, hidden_dim=16))
    result = runner.invoke(app, ["mapper", "import", str(ckpt), "--name", "../escape"])
    assert result.exit_code == 1 and "invalid mapper name" in result.stderr
