"""The feature cache at scale and across p2w versions: look-ups by key (their cost follows the keys asked for, not
the table), the training set of 200,000 cached rows built in one pass, and TEXT paths of older files upgraded."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from p2w.core.backbone import Backbone
from p2w.core.features import FeatureCache, ImageSet, Views, hash_files
from p2w.spec import BackboneSpec
from p2w.training.distributed import Dist
from p2w.training.trainset import _cached, _Job


def digest(i: int) -> str:
    return f"{i:064x}"


def filled(path: Path, rows: int, dim: int = 4) -> FeatureCache:
    """A cache with ``rows`` synthetic feature vectors (view 0 of kind ``rrc0.9``) and as many file rows."""
    cache = FeatureCache(path)
    vectors = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    cache.put([(digest(i), 0, vectors[i]) for i in range(rows)], "rrc0.9")
    cache.add_hashes([(f"/photos/{i}.jpg", 100 + i, 7, digest(i)) for i in range(rows)])
    return cache


def vm_steps(cache: FeatureCache, call: Callable[..., object], *args: object) -> int:
    """SQLite virtual-machine instructions (in tens) that ``call(*args)`` runs on the cache's connection."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    cache.con.set_progress_handler(tick, 10)
    try:
        call(*args)
    finally:
        cache.con.set_progress_handler(None, 10)
    return count[0]


def lookup_costs(path: Path, rows: int) -> tuple[int, int]:
    """VM steps of a 10-key ``get`` and of ``known_hashes`` of 10 files, on a cache of ``rows`` rows."""
    cache = filled(path, rows)
    keys = [(digest(i), 0) for i in range(0, rows, rows // 10)]
    stats = {f"/photos/{i}.jpg": (100 + i, 7) for i in range(0, rows, rows // 10)}
    assert len(cache.get(keys, "rrc0.9")) == 10 and len(cache.known_hashes(stats)) == 10
    costs = vm_steps(cache, cache.get, keys, "rrc0.9"), vm_steps(cache, cache.known_hashes, stats)
    cache.close()
    return costs


def test_lookups_cost_what_is_asked_not_the_table(tmp_path):
    small, large = lookup_costs(tmp_path / "10k.sqlite", 10_000), lookup_costs(tmp_path / "100k.sqlite", 100_000)
    for a, b in zip(small, large, strict=True):
        assert b <= 1.5 * a + 5, (small, large)  # a scan of every row would cost 10 times as much


def test_trainset_of_200k_cached_rows(tiny, tmp_path):
    """200,000 cached images (synthetic vectors: no image is read) become the training table in one pass."""
    n = 200_000
    cache = filled(tmp_path / "big.sqlite", n, dim=32)
    images = ImageSet([Path(f"/photos/{i}.jpg") for i in range(n)], [digest(i) for i in range(n)])
    backbone = Backbone.load(BackboneSpec(str(tiny.config), str(tiny.weights)), device="cpu")
    source, kept = _cached(images, _Job(backbone, Views(1), cache, [None] * n, [], 64, 0, None), Dist())
    cache.close()
    assert source.table.shape == (n, 1, 32) and len(kept.paths) == n and not kept.skipped
    expected = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
    np.testing.assert_array_equal(source.table[[0, 12_345, n - 1], 0].numpy(), expected[[0, 12_345, n - 1]])


def test_paths_that_are_not_utf8_are_stored_as_bytes(tmp_path):
    name = tmp_path / os.fsdecode(b"latin1_caf\xe9.png")  # Python's str for it holds a surrogate escape
    name.write_bytes(b"some bytes")
    cache = FeatureCache(tmp_path / "f.sqlite")
    first = hash_files([name], cache)
    assert first.paths == [name] and not first.skipped
    assert cache.con.execute("SELECT path FROM files").fetchall() == [(os.fsencode(name),)]  # the exact bytes
    assert cache.known_hashes({str(name): (10, name.stat().st_mtime_ns)}) == {str(name): first.hashes[0]}
    cache.close()


def test_an_older_cache_with_text_paths_is_upgraded_once(tmp_path):
    photo = tmp_path / "café.png"
    photo.write_bytes(b"content")
    st = photo.stat()
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)  # the schema p2w wrote before it stored bytes
    con.executescript(
        "CREATE TABLE files (path TEXT PRIMARY KEY, size INT, mtime_ns INT, hash TEXT);"
        "CREATE TABLE features (hash TEXT, kind TEXT, view INT, vec BLOB, PRIMARY KEY (hash, kind, view));"
    )
    con.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (str(photo), st.st_size, st.st_mtime_ns, digest(1)))
    con.commit()
    con.close()
    cache = FeatureCache(path)
    assert cache.con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert cache.con.execute("SELECT typeof(path), path FROM files").fetchall() == [("blob", os.fsencode(photo))]
    assert hash_files([photo], cache).hashes == [digest(1)]  # found by its bytes: the file is not read again
    cache.close()
    again = FeatureCache(path)  # a second open finds the file upgraded and changes nothing
    assert again.con.execute("SELECT count(*) FROM files").fetchone()[0] == 1
    again.close()


@pytest.mark.parametrize("views", [Views(0), Views(2)])
def test_missing_views_and_store_views_fill_what_fill_cache_fills(tiny, images, tmp_path, views):
    from p2w.core.features import fill_cache, missing_views

    backbone = Backbone.load(BackboneSpec(str(tiny.config), str(tiny.weights)), device="cpu")
    cache = FeatureCache(tmp_path / "c.sqlite")
    found = hash_files(images, cache)
    assert missing_views(found, views, cache) == [(r, v) for r in range(4) for v in range(views.per_image)]
    assert fill_cache(backbone, found, views, cache, workers=0) == {}
    assert missing_views(found, views, cache) == []
    cache.close()
