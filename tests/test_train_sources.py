"""`p2w train --data` reads every source `p2w embed dataset` reads: lists of every kind, and webdataset shards (their
members hashed by content and cached as files are: the same run as from the same images in a folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from p2w.core.backbone import Backbone
from p2w.core.features import FeatureCache, Views
from p2w.errors import P2WError
from p2w.mappers.files import read_mapper
from p2w.spec import BackboneSpec
from p2w.training import shard_set
from p2w.training.data import training_data
from p2w.training.distributed import Dist
from p2w.training.loop import train
from test_sources import shard
from test_train import config, photos  # noqa: F401  (the photos fixture)
from training_runs import assert_same_run, two_and_one_process


def _as_shards(files: list[Path], folder: Path, per_shard: int) -> str:
    """The files as img2dataset shards, in their order (KEY.png or KEY.jpg, KEY.txt): the brace pattern naming them."""
    folder.mkdir()
    count = 0
    for count, lo in enumerate(range(0, len(files), per_shard), 1):
        members = []
        for i, path in enumerate(files[lo : lo + per_shard], lo):
            members += [(f"{i:09d}{path.suffix}", path.read_bytes()), (f"{i:09d}.txt", f"photo {i}".encode())]
        shard(folder / f"{count - 1:05d}.tar", members)
    return str(folder / f"{{00000..{count - 1:05d}}}.tar")


def test_shards_train_the_run_the_same_images_in_a_folder_train(tiny, photos, tmp_path, monkeypatch):  # noqa: F811
    files = sorted(Path(f) for f in training_data(str(photos)).files)  # the folder's rows, broken.jpg among them
    pattern = _as_shards(files, tmp_path / "shards", per_shard=10)
    common = {"augment_views": 2, "val_fraction": 0.25, "epochs": 2}  # seeded crops: by content, not by name
    from_folder = train(config(tiny, photos, name="folder", **common))
    monkeypatch.setenv("P2W_HOME", str(tmp_path / "other-home"))  # a cache of its own: every feature from the tars
    from_shards = train(config(tiny, photos, data=pattern, name="shards", **common))
    assert (from_shards.images, len(from_shards.skipped)) == (from_folder.images, len(from_folder.skipped)) == (18, 1)
    assert "broken" not in str(from_shards.skipped) and "000000024" in str(from_shards.skipped)  # named by member
    np.testing.assert_allclose(from_shards.step_losses, from_folder.step_losses, rtol=1e-5, atol=1e-6)
    a, b = (read_mapper(r.mapper_path).mapper.state_dict() for r in (from_folder, from_shards))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)

    decoded: list[str] = []

    def counted(data: bytes, name: str) -> object:
        decoded.append(name)
        return real(data, name)

    real = shard_set.decode_image
    monkeypatch.setattr(shard_set, "decode_image", counted)
    monkeypatch.setenv("P2W_HOME", str(from_folder.mapper_path.parent.parent))  # the folder run's cache
    again = train(config(tiny, photos, data=pattern, name="cached", **common))
    assert again.images == 18 and decoded == ["000000024"]  # only what could not be read before: broken.jpg's bytes


def test_lists_of_every_kind_name_the_same_images(photos, tmp_path):  # noqa: F811
    files = sorted(photos.rglob("*.png"))[:4]
    rel = [os.path.relpath(p, tmp_path) for p in files]
    (tmp_path / "list.txt").write_text("# comment\n" + "\n".join(rel) + "\n")
    (tmp_path / "files.lst").write_text("\n".join(str(p) for p in files) + "\n")  # any other suffix: a path a line
    (tmp_path / "cc3m.csv").write_text("title\tfilepath\n" + "".join(f"a caption\t{r}\n" for r in rel))
    (tmp_path / "list.tsv").write_text("caption\timage_path\n" + "".join(f"x\t{r}\n" for r in rel))
    (tmp_path / "list.csv").write_text("url,path,caption\n" + "".join(f"u,{r},c\n" for r in rel) + "u,,c\n")
    (tmp_path / "mine.csv").write_text("where,caption\n" + "".join(f"{r},c\n" for r in rel))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"filepath": rel[::-1], "caption": ["c"] * 4}), tmp_path / "list.parquet")
    for name in ("list.txt", "files.lst", "cc3m.csv", "list.tsv", "list.csv", "list.parquet"):
        found = training_data(str(tmp_path / name))
        assert (found.files, found.shards) == (files, []), name  # sorted: the order of a list does not matter
    assert [reason for _, reason in training_data(str(tmp_path / "list.csv")).skipped] == ["no path"]
    assert training_data(str(tmp_path / "mine.csv"), path_column="where").files == files
    with pytest.raises(P2WError, match=r"no path column.*--path-column"):
        training_data(str(tmp_path / "mine.csv"))
    with pytest.raises(P2WError, match="not found"):
        training_data(str(tmp_path / "missing"))


def test_bad_members_are_skipped_by_reason_and_shards_need_the_cache(tiny, photos, tmp_path):  # noqa: F811
    files = sorted(photos.rglob("*.png"))[:6]
    pattern = _as_shards(files, tmp_path / "shards", per_shard=3)
    shard(tmp_path / "shards" / "00002.tar", [("000000100.txt", b"no image"), ("000000101.jpg", b"\xff\xd8 broken")])
    pattern = pattern.replace("00001}", "00002}")
    result = train(config(tiny, photos, data=pattern, name="bad", epochs=1, batch_size=2, val_fraction=0.0))
    reasons = sorted(reason for _, reason in result.skipped)
    assert result.images == 6 and len(reasons) == 2, reasons
    assert reasons[1] == "no image" and "000000101" in reasons[0], reasons
    with pytest.raises(P2WError, match=r"--no-cache .* shards"):
        train(config(tiny, photos, data=pattern, name="live", cache=False))


def test_a_shard_changed_between_the_two_passes_fails_its_rows_not_the_run(tiny, photos, tmp_path):  # noqa: F811
    files = sorted(photos.rglob("*.png"))[:4]
    pattern = _as_shards(files, tmp_path / "shards", per_shard=4)
    shards = training_data(pattern).shards
    images, where = shard_set.hash_shards(shards, Dist())
    assert [m.index for m in where] == [0, 1, 2, 3] and len(set(images.hashes)) == 4
    members = [(f"{i:09d}.png", p.read_bytes()) for i, p in enumerate(files)]
    members[1] = (members[1][0], files[3].read_bytes())  # rewritten: another image under the same key
    shard(Path(shards[0].source), members[:3])  # and cut short: the fourth member is gone
    backbone = Backbone.load(BackboneSpec(str(tiny.config), str(tiny.weights)), device="cpu")
    cache = FeatureCache(tmp_path / "cache.sqlite")
    items = [(r, 0) for r in range(4)]
    failed = shard_set.store_shard_views(backbone, images, where, shards, items, Views(1), cache, Dist(), workers=0)
    assert sorted(failed) == [1, 3]
    assert shard_set.CHANGED in failed[1] and shard_set.GONE in failed[3]
    assert set(cache.get([(images.hashes[r], 0) for r in range(4)], Views(1).kind)) == {
        (images.hashes[0], 0),
        (images.hashes[2], 0),
    }


@pytest.mark.slow
def test_two_processes_share_the_shards_and_train_the_one_process_run(tiny, photos, tmp_path):  # noqa: F811
    files = sorted(photos.rglob("*.png"))
    pattern = _as_shards(files, tmp_path / "shards", per_shard=5)  # 5 shards: rank 0 reads 3, rank 1 reads 2
    common = ["train", "--data", pattern, "--model", str(tiny.config), "--pretrained", str(tiny.weights),
              "--device", "cpu", "--epochs", "2", "--hidden-dim", "16", "--workers", "0", "--dropout", "0",
              "--val-fraction", "0", "--lr", "1e-3", "--json"]  # fmt: skip
    ddp, single = two_and_one_process(common, tmp_path / "home", batch=4, port=29544)
    assert ddp["images"] == single["images"] == 24
    assert_same_run(ddp, single)
