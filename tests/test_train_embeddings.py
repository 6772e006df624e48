"""Training from what `p2w embed dataset` reads and writes: `--embeddings DIR` (Pic2Word's objective on a layout's
vectors times their norm, no image tower; the same run as from the images' feature cache; linear in the rows), and
`--captions` from webdataset shards or a layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core import layout
from p2w.core.backbone import Backbone
from p2w.errors import P2WError
from p2w.spec import BackboneSpec
from p2w.training.loop import train
from p2w.training.trainset import layout_features
from test_train import config, photos  # noqa: F401  (the photos fixture)

runner = CliRunner()


def test_training_from_embeddings_is_the_run_from_the_feature_cache(tiny, photos, tmp_path):  # noqa: F811
    out = tmp_path / "emb"
    args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    made = runner.invoke(app, ["embed", "dataset", str(photos), "--out", str(out), "--dtype", "float32", *args])
    assert made.exit_code == 0, made.output
    common = {"augment_views": 0, "val_fraction": 0.25, "epochs": 2}  # the plain transform: what the layout holds
    from_files = train(config(tiny, photos, name="files", **common))
    from_layout = train(config(tiny, photos, data="", embeddings=str(out), name="layout", **common))
    assert (from_layout.images, from_layout.samples) == (from_files.images, from_files.samples) == (18, 18)
    np.testing.assert_allclose(from_layout.step_losses, from_files.step_losses, rtol=1e-4, atol=1e-6)
    with pytest.raises(P2WError, match="one way"):
        train(config(tiny, photos, embeddings=str(out), name="both"))


def test_a_layout_of_200k_rows_becomes_a_training_set_in_linear_time(tiny, tmp_path):
    """A million-row layout must reach its first step in bounded time: one pass over the metadata, memory-mapped
    vectors; here 200,000 synthetic rows (no timing asserted: a quadratic build never finishes)."""
    n, dim = 200_000, 32
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    norms = rng.uniform(1, 3, n).astype(np.float32)
    spec = BackboneSpec(str(tiny.config), str(tiny.weights))
    manifest = layout.Manifest(spec.id, dim, "float32", 2, n // 2, [])
    layout.start(tmp_path, manifest)
    for part in range(2):
        rows = slice(part * n // 2, (part + 1) * n // 2)
        hashes = [f"{i:064x}" for i in range(rows.start, rows.stop)]
        hashes[1] = hashes[0]  # a copy of the row before: one row per content, the first kept
        metadata = {"image_path": [f"/x/{i}.jpg" for i in range(rows.start, rows.stop)], "norm": norms[rows].tolist()}
        layout.write_part(tmp_path, part, 2, vectors[rows], {**metadata, "hash": hashes}, "float32")
    backbone = Backbone.load(spec, device="cpu")
    source, images = layout_features(tmp_path, backbone)
    assert len(images.hashes) == n - 2 and len(images.skipped) == 2
    picked = torch.tensor([0, 5, n // 2 - 2, n // 2 - 1, n - 3])  # the second row of each part was a copy
    kept = np.array([0, 6, n // 2 - 1, n // 2, n - 1])
    expected = vectors[kept] * norms[kept][:, None]
    np.testing.assert_allclose(source.get(picked, torch.zeros(5, dtype=torch.long)).numpy(), expected, rtol=1e-6)


def test_a_layout_without_norms_or_of_another_backbone_is_refused(tiny, tmp_path):
    spec = BackboneSpec(str(tiny.config), str(tiny.weights))
    backbone = Backbone.load(spec, device="cpu")
    unit = np.eye(4, 32, dtype=np.float32)
    layout.start(tmp_path / "foreign", layout.Manifest(spec.id, 32, "float32", 1, 4, []))
    (tmp_path / "foreign" / "p2w.json").unlink()  # as clip-retrieval writes it: no manifest, no norm column
    layout.write_part(tmp_path / "foreign", 0, 1, unit, {"image_path": ["a", "b", "c", "d"]}, "float32")
    with pytest.raises(P2WError, match="has no norm"):
        layout_features(tmp_path / "foreign", backbone)
    layout.start(tmp_path / "other", layout.Manifest("ViT-B-32/openai", 32, "float32", 1, 4, []))
    with pytest.raises(P2WError, match="holds embeddings of ViT-B-32/openai"):
        layout_features(tmp_path / "other", backbone)


def test_captions_from_shards_and_from_a_layout(tiny, tmp_path):
    from p2w.datasets.embed import Options, embed_dataset
    from p2w.training.captions import read_captions
    from test_datasets import _shard

    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", 0, 3)
    _shard(shards / "00001.tar", 3, 3, bad=True)  # a key without an image is no sample: its caption is not read
    from_shards = read_captions(shards / "{00000..00001}.tar")
    assert [c.text for c in from_shards] == [f"a photo number {i}" for i in range(6)]
    assert [c.text for c in read_captions(shards)] == [c.text for c in from_shards]  # a folder of shards
    spec = BackboneSpec(str(tiny.config), str(tiny.weights))
    embed_dataset([str(shards)], tmp_path / "emb", spec, lambda: Backbone.load(spec, device="cpu"), Options())
    from_layout = read_captions(tmp_path / "emb")
    assert [c.text for c in from_layout] == [f"a photo number {i}" for i in range(6)]  # the rows that were embedded
    result = runner.invoke(
        app,
        ["train", "--captions", str(tmp_path / "emb"), "--model", str(tiny.config), "--pretrained", str(tiny.weights),
         "--device", "cpu", "--max-steps", "2", "--batch-size", "4", "--hidden-dim", "16", "--keywords", "rule",
         "--name", "from-layout", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["captions"] == 6
