"""Mapper registry: download (through a local HTTP server), sha256, list/remove/default, default-mapper use."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_code_pickle
from p2w.cli import app
from p2w.errors import MapperError
from p2w.mappers.download import download
from p2w.mappers.files import read_mapper
from p2w.mappers.network import Mapper
from p2w.mappers.registry import default_for
from p2w.settings import Settings
from serving import loopback
from test_mapper import official_checkpoint

runner = CliRunner()


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) for the duration of the block."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    with loopback(handler) as url:
        yield url


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    torch.manual_seed(7)
    official_checkpoint(root / "pic2word_model.pt", Mapper(32, 48, hidden_dim=16))
    with serve(root) as url:
        yield url, root


def backbone(tiny) -> list[str]:
    return ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]


def test_download_over_http_registers_the_mapper(served, tiny, p2w_home):
    url, root = served
    result = runner.invoke(app, ["mapper", "download", f"{url}/pic2word_model.pt", "--name", "web", *backbone(tiny)])
    assert result.exit_code == 0, result.stderr
    stored = p2w_home / "mappers" / "web.safetensors"
    assert result.stdout.strip() == str(stored)
    mf = read_mapper(stored)
    assert mf.backbone == tiny.backbone_id and mf.metadata["source"] == f"{url}/pic2word_model.pt"
    from p2w.digest import sha256_file

    assert sha256_file(root / "pic2word_model.pt") in result.stderr  # the digest is printed
    assert not list((p2w_home / "downloads").iterdir())  # the source was dropped


def test_wrong_sha256_is_refused_and_nothing_is_left(served, tiny, p2w_home):
    url, _ = served
    result = runner.invoke(
        app, ["mapper", "download", f"{url}/pic2word_model.pt", "--name", "bad", "--sha256", "0" * 64, *backbone(tiny)]
    )
    assert result.exit_code == 1 and "not the expected" in result.stderr
    assert not (p2w_home / "mappers" / "bad.safetensors").exists()
    assert not list((p2w_home / "downloads").iterdir())


def test_right_sha256_and_keep_source(served, tiny, p2w_home):
    from p2w.digest import sha256_file

    url, root = served
    digest = sha256_file(root / "pic2word_model.pt")
    got = download(
        f"{url}/pic2word_model.pt",
        name="kept",
        sha256=digest.upper(),
        model=str(tiny.config),
        pretrained=str(tiny.weights),
        keep_source=True,
    )
    assert got.source_kept is not None and got.source_kept.read_bytes() == (root / "pic2word_model.pt").read_bytes()


def test_a_resumed_download_completes_the_part_file(served, tiny, p2w_home):
    url, root = served
    data = (root / "pic2word_model.pt").read_bytes()
    part = p2w_home / "downloads" / "pic2word_model.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])  # left by an interrupted run
    got = download(
        f"{url}/pic2word_model.pt",
        name="resumed",
        model=str(tiny.config),
        pretrained=str(tiny.weights),
        keep_source=True,
    )
    assert got.source_kept is not None and got.source_kept.read_bytes() == data


def test_code_in_a_served_pickle_never_runs(tmp_path, tiny, p2w_home):
    root = tmp_path / "evil"
    root.mkdir()
    marker = tmp_path / "pwned"
    write_code_pickle(root / "evil.pt", marker, key="state_dict_img2text")
    with serve(root) as url, pytest.raises(MapperError, match="weights_only"):
        download(f"{url}/evil.pt", name="evil", model=str(tiny.config), pretrained=str(tiny.weights))
    assert not marker.exists()
    assert not (p2w_home / "mappers" / "evil.safetensors").exists()


def test_offline_sources_fail_fast_with_what_to_do(p2w_home):
    with pytest.raises(MapperError, match=r"flashingtt/pic2word.*HF_HUB_OFFLINE.*p2w mapper import"):
        download("pic2word-vit-l-14")
    with pytest.raises(MapperError, match="cannot be reached"):
        download("http://127.0.0.1:9/m.pt", name="x")
    with pytest.raises(MapperError, match="known names: pic2word-vit-l-14"):
        download("pic2word-vit-l-15")


def test_list_default_remove_round_trip(served, tiny, p2w_home, images):
    url, _ = served
    for name in ("one", "two"):
        download(f"{url}/pic2word_model.pt", name=name, model=str(tiny.config), pretrained=str(tiny.weights))

    def listing() -> list[dict]:
        rows = json.loads(runner.invoke(app, ["mapper", "list", "--json"]).stdout)
        return [m for m in rows if m["source"] != "shipped with p2w"]  # the embedded model's, tested elsewhere

    assert [(m["name"], m["backbone"], m["default"]) for m in listing()] == [
        ("one", tiny.backbone_id, False),
        ("two", tiny.backbone_id, False),
    ]
    query = ["embed", "query", str(images[0]), "in red", *backbone(tiny)]
    no_default = runner.invoke(app, query)
    assert no_default.exit_code == 1 and "has no default" in no_default.stderr
    assert runner.invoke(app, ["mapper", "default", "two"]).exit_code == 0
    assert [m["default"] for m in listing()] == [False, True]
    assert runner.invoke(app, query).exit_code == 0  # the default is used
    assert runner.invoke(app, ["mapper", "remove", "two"]).exit_code == 0
    assert default_for(tiny.backbone_id) is None
    assert [m["name"] for m in listing()] == ["one"]
    missing = runner.invoke(app, ["mapper", "remove", "two"])
    assert missing.exit_code == 1 and "registered: one" in missing.stderr


def test_load_resolves_the_default_mapper_in_the_library(served, tiny, p2w_home, images):
    """`p2w.load(mapper="default")` (the default) finds what `p2w mapper default` set, as the CLI does."""
    import p2w
    from p2w.errors import MapperError

    bare = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), device="cpu")  # none set up: no mapper
    assert bare.mapper is None
    with pytest.raises(MapperError, match="has no default; run: p2w mapper import"):
        bare.encode_query(str(images[0]), "in red")
    url, _ = served
    download(f"{url}/pic2word_model.pt", name="mine", model=str(tiny.config), pretrained=str(tiny.weights))
    assert runner.invoke(app, ["mapper", "default", "mine"]).exit_code == 0
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), device="cpu")
    assert engine.mapper_file is not None and engine.mapper_file.path.stem == "mine"
    cli = runner.invoke(app, ["embed", "query", str(images[0]), "in red", *backbone(tiny), "--json"])
    assert cli.exit_code == 0, cli.stderr
    np.testing.assert_allclose(
        json.loads(cli.stdout)[0]["vector"], engine.encode_query(str(images[0]), "in red"), atol=1e-6
    )
    assert p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=None, device="cpu").mapper is None


def test_default_backbone_without_mapper_names_the_download(images):
    result = runner.invoke(app, ["embed", "query", str(images[0]), "in red"])  # ViT-L-14/openai, nothing set up
    assert result.exit_code == 1
    assert "p2w mapper download pic2word-vit-l-14" in result.stderr and "HF_HUB_OFFLINE" not in result.stderr
    assert Settings.from_env().mappers_dir.exists() is False  # nothing was downloaded or created


def test_mismatched_backbone_is_refused_on_download(served, p2w_home):
    url, _ = served  # a 32 -> 48 mapper does not fit ViT-L-14 (768 -> 768)
    with pytest.raises(MapperError, match="768"):
        download(f"{url}/pic2word_model.pt", name="wrong")
    assert not (p2w_home / "mappers" / "wrong.safetensors").exists()


def test_hf_source_from_the_cache_offline(tmp_path, tiny, monkeypatch, p2w_home):
    from huggingface_hub import constants

    from test_backbone import _put_in_hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ckpt = official_checkpoint(tmp_path / "ckpt.pt", Mapper(32, 48, hidden_dim=16))
    cached = _put_in_hub_cache(tmp_path / "hub", "someone/mapper", "ckpt.pt", ckpt)
    got = download("hf://someone/mapper/ckpt.pt", name="hub", model=str(tiny.config), pretrained=str(tiny.weights))
    assert read_mapper(got.path).metadata["source"] == "hf://someone/mapper/ckpt.pt"
    # the file was in the Hugging Face cache before p2w ran (another tool's): it stays, whatever --keep-source says
    assert cached.exists() and cached.read_bytes() == ckpt.read_bytes()
    assert got.source_kept == cached


def test_load_checks_the_widths_of_a_mapper_object(tiny):
    """`p2w.load(mapper=Mapper(...))` skipped the width check: a wrong mapper failed at the first query with a torch
    shape error instead of the message a file gets."""
    import p2w

    args = {"model": str(tiny.config), "pretrained": str(tiny.weights), "device": "cpu"}
    with pytest.raises(MapperError, match=r"maps 64-d image features to 48-d tokens, but backbone .* has 32-d"):
        p2w.load(mapper=Mapper(64, 48, hidden_dim=16), **args)
    engine = p2w.load(mapper=Mapper(32, 48, hidden_dim=16), **args)
    assert engine.encode_query(None, "a photo", mode="text").shape == (32,)


def test_a_registered_name_wins_over_a_file_of_that_name_here(tiny, tmp_path, monkeypatch, p2w_home):
    """A file called `mine` in the working folder shadowed the registered mapper `mine`; `./mine` names the file."""
    from p2w.mappers.choice import choose_mapper
    from p2w.mappers.files import import_mapper
    from p2w.settings import Settings

    settings = Settings.from_env()
    registered = import_mapper(tiny.mapper, "mine", settings.mappers_dir, tiny.backbone_id, (32, 48))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_bytes(b"a note of the user's, not a mapper")
    chosen = choose_mapper("mine", tiny.backbone_id, settings)
    assert chosen is not None and chosen.path == registered and chosen.name == "mine"
    local = choose_mapper("./mine", tiny.backbone_id, settings)
    assert local is not None and local.path == Path("mine")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_a_catalog_of_another_backbone_is_refused_without_leaking_its_connection(tmp_path):
    import os

    from p2w.errors import P2WError
    from p2w.library.catalog import Catalog

    Catalog(tmp_path / "c", "a/x", create=True).close()
    with pytest.raises(P2WError, match="belongs to a/x, not b/y") as refused:
        Catalog(tmp_path / "c", "b/y")
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str((tmp_path / "c" / "catalog.sqlite").resolve()) not in open_files, refused.value
