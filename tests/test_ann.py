"""The ANN index on its own: the reduced graph with exact re-ranking, its files, updates and refits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from p2w.core.dates import from_mtime
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog

DIM = 256


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(ann_mod, "REDUCE_MIN_COUNT", 1000)


def structured(rng: np.random.Generator, n: int, basis: np.ndarray, noise: float = 0.05) -> np.ndarray:
    """Unit vectors on the span of ``basis`` plus a little isotropic noise (image embeddings are low-rank)."""
    x = rng.standard_normal((n, basis.shape[0])).astype(np.float32) @ basis
    x += noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(DIM) * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fill(catalog: Catalog, vectors: np.ndarray, start: int = 0) -> list[int]:
    rows = [
        (f"/photos/{start + i}.jpg", 1, 1, f"{start + i:064x}", v.tobytes(), None, from_mtime(1))
        for i, v in enumerate(vectors)
    ]
    catalog.put(rows, DIM)
    paths = [r[0] for r in rows]
    found = {os.fsdecode(p): i for p, i in catalog.con.execute("SELECT path, id FROM files")}
    return [found[p] for p in paths]


def exact(catalog: Catalog, query: np.ndarray, k: int) -> list[int]:
    found = catalog.vectors_for(catalog.ids())
    return sorted(found, key=lambda i: -float(np.frombuffer(found[i], dtype=np.float32) @ query))[:k]


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(tmp_path / "cat", "test/none", create=True)
    yield c
    c.close()


def test_reduced_graph_finds_the_exact_neighbours_with_exact_scores(catalog):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, DIM)).astype(np.float32)
    fill(catalog, structured(rng, 3000, basis))
    ann = ann_mod.build(catalog)
    assert ann.projection is not None
    assert ann.index.dim == ann.projection.dim == 16  # 12 directions hold >= 99%, rounded up to 16
    assert ann.projection.energy >= ann_mod.REDUCE_ENERGY
    found = catalog.vectors_for(catalog.ids())
    hits = 0
    for q in structured(rng, 40, basis):
        ids, scores = ann.query(q, 10)
        truth = exact(catalog, q, 10)
        hits += len(set(ids.tolist()) & set(truth))
        full = np.array([np.frombuffer(found[int(i)], dtype=np.float32) @ q for i in ids])
        np.testing.assert_allclose(scores, full, atol=1e-5)  # re-ranked with the full vectors
        assert list(scores) == sorted(scores, reverse=True)
    assert hits / 400 >= 0.98
    ann.query(structured(rng, 1, basis)[0], 3, ef=10)
    assert ann.index.ef == ann_mod.CANDIDATES  # never below the candidates re-ranked
    q = structured(rng, 1, basis)[0]
    some = set(catalog.ids()[::7])
    ids, _ = ann.query(q, 10, allowed=some.__contains__)  # hnswlib's filter on the reduced graph
    assert len(ids) == 10 and set(ids.tolist()) <= some
    ids, scores = ann.query(q, 10, allowed=lambda label: False)  # nothing passes: nothing, not an error
    assert len(ids) == len(scores) == 0


def test_no_reduction_where_it_would_not_pay(catalog, tmp_path):
    rng = np.random.default_rng(1)
    flat = rng.standard_normal((1500, DIM)).astype(np.float32)
    fill(catalog, flat / np.linalg.norm(flat, axis=1, keepdims=True))
    assert ann_mod.build(catalog).projection is None  # a flat spectrum needs more than half the dimensions
    small = Catalog(tmp_path / "small", "test/none", create=True)
    fill(small, structured(rng, 900, rng.standard_normal((8, DIM)).astype(np.float32)))
    assert ann_mod.build(small).projection is None  # under REDUCE_MIN_COUNT
    small.close()


def test_saved_files_round_trip_and_leftovers_are_removed(catalog):
    rng = np.random.default_rng(2)
    basis = rng.standard_normal((12, DIM)).astype(np.float32)
    fill(catalog, structured(rng, 1500, basis))
    folder = catalog.folder
    (folder / "index.hnsw").write_bytes(b"an index of the old layout")
    (folder / "index.json").write_text(json.dumps({"generation": catalog.generation, "dim": DIM}))
    first = ann_mod.load(catalog)  # the old record lacks what is needed now: rebuilt, saved
    names = sorted(p.name for p in ann_mod.files(folder)[1:])
    assert [n.split("-")[0] for n in names] == ["index", "projection"] and not (folder / "index.hnsw").exists()
    again = ann_mod.load(catalog)
    assert again.projection is not None and first.projection is not None
    np.testing.assert_array_equal(again.projection.basis, first.projection.basis)
    q = structured(rng, 1, basis)[0]
    assert again.query(q, 5)[0].tolist() == first.query(q, 5)[0].tolist()

    added = fill(catalog, structured(rng, 100, basis), start=10_000)
    updated = ann_mod.update(again, added, [], catalog)
    assert updated.projection is again.projection  # same subspace: no refit
    ann_mod.save(updated, folder)
    after = sorted(p.name for p in ann_mod.files(folder)[1:])
    assert after[1] == names[1] and after[0] != names[0]  # a new graph file, the same projection file
    assert len(after) == 2
    v = np.frombuffer(catalog.vectors_for([added[5]])[added[5]], dtype=np.float32)
    ids, scores = ann_mod.load(catalog).query(v, 1)
    assert ids[0] == added[5] and scores[0] == pytest.approx(1.0, abs=1e-5)

    record = json.loads((folder / "index.json").read_text())
    (folder / f"projection-{record['projection']['name']}.npy").unlink()
    rebuilt = ann_mod.load(catalog)  # a record naming a missing file is not trusted
    assert rebuilt.projection is not None and rebuilt.projection.name != record["projection"]["name"]
    assert rebuilt.query(v, 1)[0][0] == added[5]


def test_update_refits_when_vectors_stray_or_the_catalog_doubles(catalog):
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((12, DIM)).astype(np.float32)
    fill(catalog, structured(rng, 1200, basis))
    ann = ann_mod.build(catalog)
    assert ann.projection is not None and ann.built == 1200
    other = rng.standard_normal((12, DIM)).astype(np.float32)
    strays = fill(catalog, structured(rng, 300, other), start=20_000)
    refit = ann_mod.update(ann, strays, [], catalog)
    assert refit.projection is not None and refit.projection.name != ann.projection.name  # rebuilt
    assert refit.built == 1500 and refit.projection.dim > ann.projection.dim
    v = np.frombuffer(catalog.vectors_for([strays[0]])[strays[0]], dtype=np.float32)
    assert refit.query(v, 1)[0][0] == strays[0]

    more = fill(catalog, structured(rng, 1600, basis), start=40_000)  # 3,100 > 2 x 1,500
    grown = ann_mod.update(refit, more, [], catalog)
    assert grown.built == 3100 and grown.projection is not refit.projection
    assert grown.live == catalog.count() == 3100


def test_a_reader_racing_a_save_retries_then_reads_the_new_files(catalog, monkeypatch):
    rng = np.random.default_rng(4)
    fill(catalog, structured(rng, 1100, rng.standard_normal((12, DIM)).astype(np.float32)))
    ann_mod.save(ann_mod.build(catalog), catalog.folder)
    real_read, calls = ann_mod._read, []

    def racing(c):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:  # the record named files a writer has just replaced
            raise FileNotFoundError("index-old.hnsw")
        return real_read(c)

    monkeypatch.setattr(ann_mod, "_read", racing)
    monkeypatch.setattr(ann_mod, "build", lambda c: pytest.fail("rebuilt instead of re-reading"))
    loaded = ann_mod.load(catalog)
    assert len(calls) == 2 and loaded.live == 1100 and loaded.projection is not None
