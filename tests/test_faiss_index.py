"""FAISS indexes over a layout: the index type chosen from rows, width and budget; build (exact and IVF-PQ), search
re-ranked with the exact vectors, metadata by row; an index FAISS built in clip-retrieval's naming; a build killed
with -9; a layout changed, truncated or missing a part; `p2w index --embeddings` and `p2w search --index`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core import layout
from p2w.datasets import faiss_index
from p2w.datasets.faiss_index import IndexInfo, build_index, choose_key, parse_memory
from p2w.datasets.index_gallery import IndexGallery
from p2w.errors import P2WError

faiss = pytest.importorskip("faiss")
runner = CliRunner()


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres (image embeddings are clustered), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_layout(folder: Path, vectors: np.ndarray, parts: int = 3, p2w: bool = True, dtype: str = "float16") -> None:
    """A layout of ``vectors`` in ``parts`` parts: p2w's (manifest, norm, hash) or clip-retrieval's (url, caption)."""
    n = len(vectors)
    layout.start(folder, layout.Manifest("synthetic/none", vectors.shape[1], dtype, parts, -(-n // parts), []))
    if not p2w:
        (folder / layout.MANIFEST).unlink()
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        meta = {
            "image_path": [f"key{i:07d}" for i in range(lo, hi)],
            "caption": [f"caption {i}" for i in range(lo, hi)],
        }
        if p2w:
            meta |= {"norm": [1.0 + i / n for i in range(lo, hi)], "hash": [f"{i:064x}" for i in range(lo, hi)]}
        else:
            meta |= {"url": [f"https://x/{i}.jpg" for i in range(lo, hi)]}
        layout.write_part(folder, part, parts, vectors[lo:hi], meta, dtype)


def exact(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    stored = vectors.astype(np.float16).astype(np.float32)
    return np.argsort(-(stored @ query), kind="stable")[:k].tolist()


def test_the_index_type_follows_rows_width_and_budget():
    four = parse_memory("4G")
    assert four == 4 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("16GB") == 16 << 30
    assert choose_key(50_000, 512, four) == "Flat"
    assert choose_key(500_000, 512, four) == "IVF2048,Flat"  # 4 sqrt(n) = 2,828 -> 2^11
    assert choose_key(500_000, 512, 256 << 20) == "OPQ64_512,IVF2048_HNSW32,PQ64x8"  # exact vectors do not fit
    assert choose_key(10_000_000, 512, four) == "OPQ64_512,IVF8192_HNSW32,PQ64x8"  # 4 sqrt(n) = 12,649 -> 2^13
    assert choose_key(10_000_000, 768, 500 << 20) == "OPQ32_768,IVF8192_HNSW32,PQ32x8"  # the budget decides
    assert choose_key(10**9, 768, 64 << 30) == "OPQ48_768,IVF65536_HNSW32,PQ48x8"
    with pytest.raises(P2WError, match="do not fit"):
        choose_key(10_000_000, 512, 100 << 20)
    with pytest.raises(P2WError, match="cannot read the memory size"):
        parse_memory("lots")


def test_exact_and_ivf_pq_indexes_search_re_ranked_with_metadata(tmp_path):
    vectors = clustered(20_000, 32)
    folder = tmp_path / "emb"
    make_layout(folder, vectors)
    flat = build_index(folder, queries=100)
    assert (flat.key, flat.params, flat.rows, flat.recall_at_10) == ("Flat", "", 20_000, 1.0)
    gallery = IndexGallery(folder)
    query = vectors[123]
    hits = gallery.search(query, 5)
    assert [h.id for h in hits] == exact(vectors, query, 5) and hits[0].id == 123
    assert (hits[0].path, hits[0].caption, hits[0].rank) == ("key0000123", "caption 123", 1)
    np.testing.assert_allclose(gallery.features(123), vectors[123].astype(np.float16) * (1 + 123 / 20_000), rtol=1e-3)
    assert gallery.local_file(123) is None  # a key, not a file
    gallery.close()
    pq = build_index(folder, key="IVF64,PQ8x8", queries=100)
    record = json.loads((folder / "index.json").read_text())
    assert [b["key"] for b in record["builds"]] == ["IVF64,PQ8x8"] and record["backbone"] == "synthetic/none"
    assert pq.params.startswith("nprobe=") and pq.recall_at_10 is not None and pq.recall_at_10 >= 0.95
    gallery = IndexGallery(folder)
    right = [len(set(h.id for h in gallery.search(vectors[i], 10)) & set(exact(vectors, vectors[i], 10)))
             for i in range(0, 20_000, 500)]  # fmt: skip
    assert sum(right) / (10 * len(right)) >= 0.9, right
    narrow, wide = (sum(len(set(exact(vectors, vectors[i], 10)) & {h.id for h in gallery.search(vectors[i], 10, ef=ef)})
                        for i in range(0, 20_000, 500)) for ef in (1, 64))  # fmt: skip
    assert narrow < wide and gallery.params == pq.params  # --ef: one list, then all 64; then the build's again


def test_an_index_faiss_built_in_clip_retrievals_naming_is_searched(tmp_path):
    """No manifest, no norm, no index.json: a layout and index as clip-retrieval and autofaiss write them."""
    vectors = clustered(3_000, 16, seed=2)
    folder = tmp_path / "laion-like"
    make_layout(folder, vectors, parts=2, p2w=False)
    index = faiss.IndexFlatIP(16)
    index.add(np.concatenate([np.load(f) for f in layout.vector_files(folder)]).astype(np.float32))
    faiss.write_index(index, str(folder / "image.index"))
    gallery = IndexGallery(folder)
    hits = gallery.search(vectors[2_500], 3)
    assert hits[0].id == 2_500 and hits[0].url == "https://x/2500.jpg" and hits[0].caption == "caption 2500"
    assert gallery.backbone is None and gallery.features(2_500) is None  # no norm: refining needs the image
    assert hits[0].to_json()["url"] == "https://x/2500.jpg"


def test_a_build_killed_with_9_leaves_the_previous_index_usable(tmp_path):
    vectors = clustered(120_000, 64, seed=3)
    folder = tmp_path / "emb"
    make_layout(folder, vectors, parts=2)
    first = build_index(folder, key="IVF16,Flat", queries=20)
    code = (f"from pathlib import Path; from p2w.datasets.faiss_index import build_index\n"
            f"build_index(Path({str(folder)!r}), key='IVF1024,PQ16x8', queries=400)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (folder / "lock").exists() and os.path.getsize(folder / "lock") > 0:
            time.sleep(1.5)  # training or adding: well inside the build
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    info = IndexInfo.read(folder)
    assert info is not None and info.current(folder) == first  # still the first build
    gallery = IndexGallery(folder)
    assert gallery.search(vectors[7], 1)[0].id == 7
    again = build_index(folder, key="IVF16,Flat", queries=20)  # the lock is free again; leftovers are cleared
    assert IndexInfo.read(folder).current(folder) == again and not list(folder.glob(".image.index.*.tmp"))


def test_stopping_between_the_rename_and_the_record_leaves_an_index_that_opens(tmp_path, monkeypatch):
    vectors = clustered(2_000, 16, seed=4)
    folder = tmp_path / "emb"
    make_layout(folder, vectors, parts=1)
    build_index(folder, queries=20)
    writes = []
    real = IndexInfo.write

    def dies_on_the_second(self, where):  # type: ignore[no-untyped-def]
        writes.append(self)
        if len(writes) == 2:
            raise KeyboardInterrupt  # as a kill right after the new file was renamed into place
        real(self, where)

    monkeypatch.setattr(IndexInfo, "write", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        build_index(folder, key="IVF4,Flat", queries=20)
    monkeypatch.undo()
    record = IndexInfo.read(folder)
    assert record is not None and [b.key for b in record.builds] == ["Flat", "IVF4,Flat"]
    assert record.current(folder).key == "IVF4,Flat"
    assert IndexGallery(folder).search(vectors[9], 1)[0].id == 9


def test_a_changed_truncated_or_incomplete_layout_is_a_clear_error(tmp_path):
    vectors = clustered(1_500, 16, seed=5)
    folder = tmp_path / "emb"
    make_layout(folder, vectors, parts=3)
    with pytest.raises(P2WError, match=r"no image.index .* p2w index --embeddings"):
        IndexGallery(folder)
    build_index(folder, queries=20)
    files = layout.vector_files(folder)
    os.utime(files[1], ns=(1, 1))  # rewritten since the build
    with pytest.raises(P2WError, match="changed since its index was built; build it again"):
        IndexGallery(folder)
    files[1].write_bytes(files[1].read_bytes()[:-100])  # truncated
    with pytest.raises(P2WError, match=r"cannot read .*img_emb"):
        build_index(folder)
    other = tmp_path / "other"
    make_layout(other, vectors, parts=3)
    foreign = faiss.IndexFlatIP(16)
    foreign.add(vectors)
    faiss.write_index(foreign, str(other / "image.index"))  # as another tool builds it: no record
    layout.metadata_file(layout.vector_files(other)[2]).unlink()
    with pytest.raises(P2WError, match=r"metadata_2.parquet is missing"):
        build_index(other)
    with pytest.raises(P2WError, match=r"metadata_2.parquet is missing"):
        IndexGallery(other)


def test_index_embeddings_and_search_index_from_the_command_line(tiny, images, tmp_path):
    out = tmp_path / "emb"
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    made = runner.invoke(app, ["embed", "dataset", str(images[0].parent), "--out", str(out), *backbone])
    assert made.exit_code == 0, made.output
    built = runner.invoke(app, ["index", "--embeddings", str(out), "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["key"] == "Flat" and (out / "image.index").is_file()
    mapper = ["--mapper", str(tiny.mapper)]
    two = [str(images[0]), str(images[1]), "--prompt", "a * with the colour of *"]
    for query in (
        [str(images[1])],
        ["red"],
        [str(images[1]), "in red"],
        two,
        [str(images[1]), "red", "--mode", "average"],
    ):
        found = runner.invoke(app, ["search", *query, "--index", str(out), "-k", "2", "--json", *backbone, *mapper])
        assert found.exit_code == 0, (query, found.output)
        hits = json.loads(found.stdout)
        assert len(hits) == 2 and all(Path(h["path"]).parent == images[0].parent for h in hits), hits
    same = runner.invoke(app, ["search", str(images[1]), "--mode", "image", "--index", str(out), "--json", *backbone])
    assert json.loads(same.stdout)[0]["path"] == str(images[1])  # the image itself is its own nearest
    other = runner.invoke(app, ["search", "red", "--index", str(out), "--model", "ViT-B-32"])
    assert other.exit_code == 1 and "holds embeddings of" in other.stderr
    both = runner.invoke(app, ["index", str(images[0]), "--embeddings", str(out)])
    assert both.exit_code == 1 and "not both" in both.stderr


def test_the_module_names_faiss_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(P2WError, match=r"pip install 'p2w\[faiss\]'"):
        faiss_index.faiss_module()


def test_on_ray_the_index_is_filled_by_tasks_and_finds_what_one_process_finds(tmp_path, ray_cluster):
    vectors = clustered(6_000, 16, seed=6)
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        make_layout(folder, vectors, parts=3)
    local = build_index(here, key="IVF16,PQ4x8", queries=50)
    remote = build_index(there, key="IVF16,PQ4x8", queries=50, ray="auto")  # the session's cluster: 3 tasks
    assert (remote.rows, remote.params, remote.recall_at_10) == (local.rows, local.params, local.recall_at_10)
    a, b = IndexGallery(here), IndexGallery(there)
    assert b.index.ntotal == 6_000
    for i in range(0, 6_000, 300):
        assert [h.id for h in a.search(vectors[i], 10)] == [h.id for h in b.search(vectors[i], 10)]
    with pytest.raises(P2WError, match="unknown --ray address"):
        build_index(there, ray="cluster-1")


def test_a_name_that_is_not_utf8_is_embedded_indexed_and_found_exactly(tiny, tmp_path):
    """The layout's image_path is text for the tools that read it (the name as p2w shows it) and its exact bytes are
    kept beside it; a search gives the exact name back."""
    import base64

    import pyarrow.parquet as pq
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9.png")
    Image.new("RGB", (24, 24), "red").save(odd)
    Image.new("RGB", (24, 24), "blue").save(folder / "plain.png")
    out = tmp_path / "emb"
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    made = runner.invoke(app, ["embed", "dataset", str(folder), "--out", str(out), *backbone])
    assert made.exit_code == 0, made.output
    table = pq.read_table(layout.metadata_file(layout.vector_files(out)[0])).to_pylist()
    by_name = {row["image_path"]: row for row in table}
    assert by_name[str(folder) + "/caf\\xe9.png"]["image_path_bytes"] == os.fsencode(odd)
    assert by_name[str(folder / "plain.png")]["image_path_bytes"] is None
    assert runner.invoke(app, ["index", "--embeddings", str(out)]).exit_code == 0
    found = runner.invoke(app, ["search", odd, "--mode", "image", "--index", str(out), "--json", *backbone])
    assert found.exit_code == 0, found.output
    first = json.loads(found.stdout)[0]
    assert os.fsdecode(base64.b64decode(first["path_bytes"])) == odd
    assert IndexGallery(out).local_file(_row_of(out, odd)).path == odd  # the exact name: servable


def _row_of(folder: Path, path: str) -> int:
    rows = pq_rows(folder)
    return next(i for i, row in enumerate(rows) if layout.image_path_of(row) == path)


def pq_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for f in layout.vector_files(folder) for row in pq.read_table(layout.metadata_file(f)).to_pylist()]


def test_a_second_build_of_the_same_layout_is_refused_while_one_runs(tmp_path):
    from p2w.core.lock import writer_lock

    folder = tmp_path / "emb"
    make_layout(folder, clustered(500, 16, seed=7), parts=1)
    with writer_lock(folder, "the index"), pytest.raises(P2WError, match="updating the index in"):
        build_index(folder)
    assert not (folder / "image.index").exists()
    assert build_index(folder).rows == 500  # free again
