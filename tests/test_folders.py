"""Folders as users have them: one that cannot be listed for a while, an indexed folder renamed, a drive gone for
good. The catalog never drops what it cannot see, recognises a move by content, and says how to drop what is gone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import p2w
from p2w.cli import app
from p2w.library.catalog import Catalog, catalog_for
from p2w.library.index import index
from p2w.spec import BackboneSpec

runner = CliRunner()


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"photo {i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(path, quality=90)
        out.append(path)
    return out


@pytest.fixture
def spec(tiny) -> BackboneSpec:
    return BackboneSpec(str(tiny.config), str(tiny.weights))


def load(spec: BackboneSpec):  # type: ignore[no-untyped-def]
    return lambda: p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu")


def never():  # type: ignore[no-untyped-def]
    raise AssertionError("the model was loaded although nothing needed embedding")


def paths_in(spec: BackboneSpec) -> set[str]:
    catalog = Catalog(catalog_for(spec), spec.id)
    try:
        return {row.path for row in catalog.rows_for(catalog.ids()).values()}
    finally:
        catalog.close()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind (not root)")
def test_a_folder_that_cannot_be_listed_keeps_its_photos(spec, tmp_path):
    _folder_that_cannot_be_listed(spec, tmp_path)


def test_a_folder_that_cannot_be_listed_keeps_its_photos_as_root(spec, tmp_path, monkeypatch):
    """The same where permissions do not bind (CI runs as root): the listing fails as an EIO on a share would."""
    real = os.scandir

    def scandir(path="."):  # type: ignore[no-untyped-def]
        if not isinstance(path, int) and Path(path).name == "share" and os.environ.get("P2W_TEST_EIO"):
            raise OSError(5, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _folder_that_cannot_be_listed(spec, tmp_path, monkeypatch)


def _folder_that_cannot_be_listed(spec, tmp_path, monkeypatch=None):  # type: ignore[no-untyped-def]
    """`core/walk.py` swallowed the OSError, then every row under the folder was removed: a full re-embed later."""
    lib = tmp_path / "lib"
    make_photos(lib / "local", 3)
    share = lib / "share"
    kept = make_photos(share, 4, seed=1)
    index([lib], spec, load(spec), workers=0)
    if monkeypatch is None:
        share.chmod(0)
    else:
        monkeypatch.setenv("P2W_TEST_EIO", "1")
    try:
        report = index([lib], spec, never, workers=0)
        assert report.removed == 0 and report.total == 7
        assert [p for p, _ in report.unreadable] == [str(share)]
        assert {str(p) for p in kept} <= paths_in(spec)
        cli = runner.invoke(app, ["index", str(lib), "--model", spec.model, "--pretrained", str(spec.pretrained)])
        assert cli.exit_code == 0 and f"warning: {share} cannot be listed" in cli.stderr, cli.output
    finally:
        share.chmod(0o755)
        if monkeypatch is not None:
            monkeypatch.delenv("P2W_TEST_EIO")
    kept[0].unlink()  # readable again, and really without this one: now it goes
    report = index([lib], spec, never, workers=0)
    assert report.removed == 1 and report.total == 6 and not report.unreadable


def test_a_renamed_folder_is_a_move_and_the_old_root_goes(spec, tmp_path):
    """`mv mix mix2; p2w index mix2` reported `added 11, moved 0` and kept the old paths forever."""
    old = tmp_path / "mix"
    make_photos(old, 5)
    index([old], spec, load(spec), workers=0)
    new = tmp_path / "mix2"
    old.rename(new)
    report = index([new], spec, never, workers=0)  # content hashes known: no model
    assert (report.moved, report.added, report.removed, report.total) == (5, 0, 0, 5)
    assert all(p.startswith(str(new) + os.sep) for p in paths_in(spec))
    catalog = Catalog(catalog_for(spec), spec.id)
    assert catalog.roots() == [str(new)] and catalog.gone_roots() == []  # the old root's record went with its photos
    catalog.close()


def test_a_folder_gone_for_good_is_shown_and_forgotten(spec, tmp_path):
    gone = tmp_path / "usb" / "DCIM"
    make_photos(gone, 4)
    here = tmp_path / "here"
    make_photos(here, 2, seed=3)
    index([gone], spec, load(spec), workers=0)
    index([here], spec, load(spec), workers=0)
    shutil.rmtree(tmp_path / "usb")
    tiny = ["--model", spec.model, "--pretrained", str(spec.pretrained)]
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and f"gone from disk: {gone} (4 photos" in status.stderr, status.output
    assert "p2w forget " in status.stderr
    (info,) = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert info["gone"] == [{"path": str(gone), "photos": 4}]
    again = runner.invoke(app, ["index", str(gone), *tiny])
    assert again.exit_code == 1 and f"p2w forget {gone}" in again.stderr  # not a bare "not found"
    refused = runner.invoke(app, ["forget", str(here), *tiny])
    assert refused.exit_code == 1 and "exists" in refused.stderr  # a folder still there is not dropped by mistake
    done = runner.invoke(app, ["forget", str(gone), *tiny])
    assert done.exit_code == 0 and "forgot 4 photos" in done.stderr, done.output
    (info,) = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert info["files"] == 2 and info["gone"] == [] and info["index_current"]
    assert here.is_dir() and len(list(here.iterdir())) == 2  # nothing on disk touched


def test_skipped_files_that_vanished_leave_the_catalog(spec, tmp_path):
    lib = tmp_path / "lib"
    make_photos(lib, 2)
    broken = lib / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    report = index([lib], spec, load(spec), workers=0)
    assert [p for p, _ in report.skipped] == [str(broken)]
    broken.unlink()
    index([lib], spec, never, workers=0)
    catalog = Catalog(catalog_for(spec), spec.id)
    assert catalog.skipped_under([str(lib)]) == {}
    catalog.close()
