"""``p2w duplicates``: near-identical photos grouped from a catalog's vectors (the embedded micro model, its shipped
demo items as photos), and at scale with synthetic rows."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core.dates import Where, from_mtime
from p2w.library import duplicates as dup
from p2w.library.catalog import Catalog
from p2w.micro import world as mw
from p2w.micro.demo import gallery_items

runner = CliRunner()
MICRO = ["--model", "p2w-micro-fashion"]


def painted(i: int, colour: int, side: int = 128) -> Image.Image:
    images, _, _ = gallery_items()
    rgb = mw.colourise(images[i : i + 1], np.array([colour]))[0]
    return Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Six distinct photos (items 0-5, each in its own colour), and in another folder three near-identical versions
    of item 0: a byte copy, a JPEG at quality 60, the same at half size."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for i in range(6):
        painted(i, i).save(root / f"item {i}.png")
    (root / "trip" / "copy.png").write_bytes((root / "item 0.png").read_bytes())
    buffer = io.BytesIO()
    painted(0, 0).save(buffer, "JPEG", quality=60)
    (root / "trip" / "q60.jpg").write_bytes(buffer.getvalue())
    painted(0, 0, 64).save(root / "trip" / "half.png")
    return root


def test_near_identical_photos_are_grouped_largest_file_first(library):
    assert runner.invoke(app, ["index", str(library), *MICRO, "--workers", "0"]).exit_code == 0
    result = runner.invoke(app, ["duplicates", *MICRO, "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert len(groups) == 1, groups
    photos = groups[0]["photos"]
    names = [Path(p["path"]).name for p in photos]
    assert sorted(names) == ["copy.png", "half.png", "item 0.png", "q60.jpg"]
    sizes = [p["size"] for p in photos]
    assert sizes[0] == max(sizes) and photos[0]["similarity"] == 1.0
    assert all(p["similarity"] >= dup.THRESHOLD for p in photos)
    assert {n: s for n, s in zip(names, (p["similarity"] for p in photos), strict=True)}["copy.png"] == 1.0
    within = json.loads(runner.invoke(app, ["duplicates", *MICRO, "--json", "--in", str(library / "trip")]).stdout)
    assert [sorted(Path(p["path"]).name for p in g["photos"]) for g in within] == [["copy.png", "half.png", "q60.jpg"]]
    strict = json.loads(runner.invoke(app, ["duplicates", *MICRO, "--json", "--threshold", "0.99999"]).stdout)
    (kept,) = [{Path(p["path"]).name for p in g["photos"]} for g in strict]  # the JPEG falls away, the copy stays
    assert "q60.jpg" not in kept and {"copy.png", "item 0.png"} <= kept
    table = runner.invoke(app, ["duplicates", *MICRO])
    assert table.exit_code == 0 and "q60.jpg" in table.stdout and "nothing was moved or deleted" in table.stderr
    assert len(list(library.rglob("*.*"))) == 9  # nothing touched
    bad = runner.invoke(app, ["duplicates", *MICRO, "--threshold", "2"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_planted_copies_among_twenty_thousand_rows(tmp_path, monkeypatch):
    """20,000 synthetic 64-d rows (the library's path at scale, without the time a test may not take), 200 of them
    with a near copy (cosine about 0.99) and 50 with two: every planted group found, nothing else."""
    rng = np.random.default_rng(0)
    n, dim = 20_000, 64
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    copies = []
    for i in range(250):
        for _ in range(1 if i < 200 else 2):
            v = vectors[i] + 0.1 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
            copies.append((i, (v / np.linalg.norm(v)).astype(np.float32)))
    catalog = Catalog(tmp_path / "catalog", "b/x", create=True)
    when = from_mtime(0)
    rows = [(f"/p/{i}.jpg", 10, 1, f"{i:064x}", v.tobytes(), 1.0, when) for i, v in enumerate(vectors)]
    rows += [(f"/p/copy-{j}-of-{i}.jpg", 5, 1, f"c{j:063x}", v.tobytes(), 1.0, when) for j, (i, v) in enumerate(copies)]
    catalog.put(rows, dim)
    monkeypatch.setattr(dup.os.path, "exists", lambda path: True)
    groups = dup.duplicates(catalog)
    assert len(groups) == 250
    assert sorted(len(g.photos) for g in groups) == [2] * 200 + [3] * 50
    for g in groups:
        first = g.photos[0].path  # the larger file: the original
        assert first.startswith("/p/") and "copy" not in first
        assert all(p.path.endswith(f"-of-{Path(first).stem}.jpg") for p in g.photos[1:])
    only = dup.duplicates(catalog, where=Where(within="/q"))
    assert only == []
    catalog.close()
    assert os.path.exists(tmp_path / "catalog" / "catalog.sqlite")
