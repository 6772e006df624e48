"""`p2w index` / `p2w search`: incremental, crash-safe, per backbone, with clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import p2w
from p2w.cli import app
from p2w.core.dates import Where, from_mtime
from p2w.core.lock import writer_lock
from p2w.errors import P2WError
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, catalog_for
from p2w.library.index import index
from p2w.library.search import open_catalog, search
from p2w.library.status import status
from p2w.spec import BackboneSpec

runner = CliRunner()


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 255, (36 + i % 5, 44, 3), dtype=np.uint8)
        path = folder / f"photo {i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        out.append(path)
    return out


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    make_photos(tmp_path / "Pictures" / "2024", 6)
    make_photos(tmp_path / "Pictures" / "2025 été", 6, seed=1)
    return tmp_path / "Pictures"


@pytest.fixture
def spec(tiny) -> BackboneSpec:
    return BackboneSpec(str(tiny.config), str(tiny.weights))


def engine_factory(spec: BackboneSpec):  # type: ignore[no-untyped-def]
    calls = []

    def load():  # type: ignore[no-untyped-def]
        calls.append(1)
        return p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu")

    load.calls = calls  # type: ignore[attr-defined]
    return load


def never():  # type: ignore[no-untyped-def]
    raise AssertionError("the model was loaded although nothing needed embedding")


def test_index_then_rerun_opens_nothing(lib, spec, monkeypatch):
    first = index([lib], spec, engine_factory(spec), workers=0, batch_size=4)
    assert (first.added, first.unchanged, first.total, first.skipped) == (12, 0, 12, [])
    monkeypatch.setattr("p2w.core.images.Image.open", lambda *a, **k: pytest.fail("an image was opened"))
    graph = [p.stat().st_mtime_ns for p in ann_mod.files(first.catalog)[1:]]
    again = index([lib], spec, never, workers=0)
    assert (again.added, again.updated, again.removed, again.unchanged, again.total) == (0, 0, 0, 12, 12)
    assert [p.stat().st_mtime_ns for p in ann_mod.files(first.catalog)[1:]] == graph  # the index is not rewritten
    assert status()[0].ann_current


def test_moves_copies_edits_and_deletions(lib, spec):
    index([lib], spec, engine_factory(spec), workers=0)
    a, b, c = sorted((lib / "2024").glob("*.jpg"))[:3]
    shutil.move(a, lib / "2025 été" / "moved here.jpg")
    shutil.copy(b, lib / "copy of b.jpg")
    c.unlink()
    report = index([lib], spec, never, workers=0)  # no new content: no model needed
    assert (report.added, report.moved, report.removed, report.updated) == (1, 1, 1, 0)
    assert report.total == 12
    edited = sorted((lib / "2025 été").glob("photo*.jpg"))[0]
    Image.new("RGB", (40, 40), "red").save(edited)
    load = engine_factory(spec)
    report = index([lib], spec, load, workers=0)
    assert report.updated == 1 and load.calls == [1]
    catalog = open_catalog(spec)
    paths = {os.fsdecode(r[0]) for r in catalog.con.execute("SELECT path FROM files")}
    assert str(lib / "2025 été" / "moved here.jpg") in paths and str(a) not in paths and str(c) not in paths
    assert len(paths) == catalog.count() == 12
    ann = ann_mod.load(catalog)
    assert ann.live == 12 and set(ann.index.get_ids_list()) >= set(catalog.ids())


def test_catalog_keeps_the_features_norm_and_old_catalogs_migrate(lib, spec, tmp_path):
    """vec * norm gives back the image tower's features (a mapper reads them unnormalised), also for moved copies;
    a schema-1 catalog (no norm column) is upgraded in place, its rows without a norm."""
    import torch

    from p2w.library.catalog import SCHEMA_VERSION, Catalog

    index([lib], spec, engine_factory(spec), workers=0)
    shutil.copy(sorted((lib / "2024").glob("*.jpg"))[0], lib / "copy.jpg")
    index([lib], spec, never, workers=0)  # the copy reuses the stored vector and norm
    catalog = open_catalog(spec)
    rows = catalog.rows_for(catalog.ids())
    norms, vectors = catalog.norms_for(list(rows)), catalog.vectors_for(list(rows))
    assert set(norms) == set(rows)
    engine = p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu")
    copy = next((i, r) for i, r in rows.items() if r.path.endswith("copy.jpg"))
    for i, row in [*list(rows.items())[:3], copy]:
        feats = engine.image_features([row.path])[0]  # decoded as the catalog decoded it
        rebuilt = torch.from_numpy(np.frombuffer(vectors[i], dtype=np.float32) * np.float32(norms[i]))
        torch.testing.assert_close(rebuilt, feats, rtol=1e-5, atol=1e-6)
    catalog.close()
    old = tmp_path / "old"
    old.mkdir()
    con = sqlite3.connect(old / "catalog.sqlite")
    con.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE files (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER,"
        " mtime_ns INTEGER, hash TEXT NOT NULL, vec BLOB NOT NULL, added REAL);"
        "CREATE TABLE skipped (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);"
        "INSERT INTO meta VALUES ('schema', '1'), ('backbone', 'b/x'), ('dim', '4'), ('generation', '1');"
        "INSERT INTO files (path, size, mtime_ns, hash, vec)"
        " VALUES ('/p.jpg', 1, 1, 'h', x'0000803f000000000000000000000000');"
    )
    con.commit()
    con.close()
    migrated = Catalog(old, "b/x")
    assert int(migrated.meta()["schema"]) == SCHEMA_VERSION == 4
    assert migrated.count() == 1 and migrated.norms_for(migrated.ids()) == {}
    assert list(migrated.rows_under(["/p.jpg"])) == ["/p.jpg"]  # the TEXT path is now its bytes, found as before
    # dated by its mtime on this machine's clock (SQLite's localtime, as Python's), its EXIF left for p2w index
    (taken,) = migrated.con.execute("SELECT taken FROM files").fetchone()
    assert taken == from_mtime(1).seconds and migrated.undated_under(["/"]) == {"/p.jpg": 1}
    assert migrated.roots() == [] and migrated.gone_roots() == []
    migrated.close()


def test_search_matches_exact_and_skips_deleted_files(lib, spec):
    index([lib], spec, engine_factory(spec), workers=0)
    engine = p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu")
    query = engine.encode_query(None, "a photo of a cat")
    catalog = open_catalog(spec)
    hits = search(catalog, query, k=5)
    ids = catalog.ids()
    vecs = catalog.vectors_for(ids)
    exact = sorted(ids, key=lambda i: -float(np.frombuffer(vecs[i], dtype=np.float32) @ query))[:5]
    assert [h.path for h in hits] == [catalog.rows_for([i])[i].path for i in exact]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    Path(hits[0].path).unlink()
    assert hits[0].path not in [h.path for h in search(catalog, query, k=5)]
    within = search(catalog, query, k=20, where=Where.parse(lib / "2024"))
    assert within and all(h.path.startswith(str(lib / "2024") + os.sep) for h in within)
    assert len(search(catalog, query, k=50)) == 11  # k is clamped to what exists
    assert [h.path for h in search(catalog, query, k=3, ef=500)] == [h.path for h in hits[1:4]]
    ann = ann_mod.load(catalog)
    ann.query(query, 3, ef=77)
    assert ann.index.ef == 77  # --ef reaches hnswlib
    ann.query(query, 3, ef=2)
    assert ann.index.ef == 3  # never below k
    ann.query(query, 3)
    assert ann.index.ef == ann_mod.default_ef(catalog.dim)
    assert [ann_mod.default_ef(d) for d in (768, 1024, 512, 128, 32)] == [150, 150, 225, 400, 400]


def test_stale_or_corrupt_ann_is_rebuilt(lib, spec):
    index([lib], spec, engine_factory(spec), workers=0)
    catalog = open_catalog(spec)
    index_file = catalog.folder / f"index-{json.loads((catalog.folder / 'index.json').read_text())['index']}.hnsw"
    index_file.write_bytes(b"garbage")
    query = np.frombuffer(next(catalog.all_vectors())[1], dtype=np.float32)
    assert search(catalog, query, k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    files = ann_mod.files(catalog.folder)
    assert not index_file.exists() and len(files) == 2 and files[1].stat().st_size > 100  # rebuilt and saved


def test_corrupt_and_unusual_files(tmp_path, spec):
    folder = tmp_path / "odd"
    make_photos(folder, 2)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("I am not a JPEG")
    good = (folder / "photo 000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "huge.png").write_bytes(_png_header(200_000, 200_000))
    Image.new("I;16", (30, 30), 40000).save(folder / "sixteen.png")
    Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    pal = Image.new("P", (30, 30), 1)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    Image.new("RGBA", (30, 30), (255, 0, 0, 100)).save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), "blue").save(folder / "rotated.jpg", exif=exif)
    (folder / ".hidden.jpg").write_bytes(good)
    (folder / "._appledouble.jpg").write_bytes(b"\x00\x05\x16\x07")
    (folder / "@eaDir").mkdir()
    (folder / "@eaDir" / "thumb.jpg").write_bytes(good)
    report = index([folder], spec, engine_factory(spec), workers=0)
    skipped = {Path(p).name for p, _ in report.skipped}
    assert skipped == {"zero.jpg", "text.jpg", "truncated.jpg", "huge.png"}
    assert report.added == 7 and report.total == 7
    assert "pixels" in dict((Path(p).name, r) for p, r in report.skipped)["huge.png"]
    again = index([folder], spec, never, workers=0)  # unchanged broken files are not retried
    assert {Path(p).name for p, _ in again.skipped} == skipped


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_second_writer_is_refused(lib, spec):
    with writer_lock(catalog_for(spec)), pytest.raises(P2WError, match="is updating the catalog"):
        index([lib], spec, never, workers=0)


def test_one_catalog_per_backbone(lib, tiny, spec):
    index([lib], spec, engine_factory(spec), workers=0)
    random_spec = BackboneSpec(str(tiny.config), "none")
    index([lib / "2024"], random_spec, engine_factory(random_spec), workers=0)
    assert catalog_for(spec) != catalog_for(random_spec)
    assert open_catalog(spec).count() == 12 and open_catalog(random_spec).count() == 6
    with pytest.raises(P2WError, match="belongs to"):
        Catalog(catalog_for(spec), random_spec.id)


def test_errors_before_any_model(tmp_path, spec, tiny):
    with pytest.raises(P2WError, match="p2w index DIR"):
        open_catalog(spec)
    with pytest.raises(P2WError, match="not found"):
        index([tmp_path / "nope"], spec, never)
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    result = runner.invoke(app, ["search", "a dog", *backbone])
    assert result.exit_code == 1 and "p2w index DIR" in result.stderr
    result = runner.invoke(app, ["index", str(tmp_path / "nope"), *backbone])
    assert result.exit_code == 1 and result.stderr.startswith("error: not found")


def test_a_model_that_cannot_load_leaves_no_catalog(lib, p2w_home):
    offline = ["--model", "ViT-B-32", "--pretrained", "openai", "--workers", "0"]  # tests set HF_HUB_OFFLINE=1
    result = runner.invoke(app, ["index", str(lib), *offline])
    error = result.stderr.strip()
    assert result.exit_code == 1 and error.startswith("error: cannot download") and "\n" not in error
    shown = runner.invoke(app, ["status", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout) == []
    assert not catalog_for(BackboneSpec("ViT-B-32", "openai")).exists()
    assert not (p2w_home / "catalogs").exists()


def test_a_failed_run_never_removes_photos(lib, spec):
    def broken():  # type: ignore[no-untyped-def]
        raise P2WError("no model here")

    with pytest.raises(P2WError, match="no model here"):
        index([lib], spec, broken, workers=0)
    assert not catalog_for(spec).exists()
    index([lib / "2024"], spec, engine_factory(spec), workers=0)
    with pytest.raises(P2WError, match="no model here"):
        index([lib], spec, broken, workers=0)  # new photos, no model: what was catalogued stays
    assert open_catalog(spec).count() == 6


def test_cli_json_schemas(lib, tiny, images):
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    result = runner.invoke(app, ["index", str(lib), *backbone, "--workers", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"added", "updated", "moved", "removed", "unchanged", "skipped", "total", "backbone"} <= set(report)
    found = runner.invoke(app, ["search", "a dog", *backbone, "--json", "-k", "3"])
    assert found.exit_code == 0, found.stderr
    rows = json.loads(found.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {"rank", "score", "path", "taken", "taken_from"} for r in rows)
    paths = runner.invoke(app, ["search", str(images[0]), *backbone, "--paths", "-k", "2"])
    assert paths.exit_code == 0 and len(paths.stdout.splitlines()) == 2
    composed = runner.invoke(app, ["search", str(images[0]), "in red", *backbone, "--mapper", str(tiny.mapper)])
    assert composed.exit_code == 0, composed.stderr
    shown = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert shown[0]["files"] == 12 and shown[0]["backbone"] == BackboneSpec(*backbone[1:4:2]).id


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [3, 15])
def test_kill_9_then_resume(tmp_path, tiny, spec, kill_after):
    folder = tmp_path / "many"
    make_photos(folder, 30)
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "p2w",
        "index",
        str(folder),
        "--model",
        str(tiny.config),
        "--pretrained",
        str(tiny.weights),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = catalog_for(spec, p2w.Settings.from_env(env)) / "catalog.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.is_file() and _count(db) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["total"] == 30 and report["unchanged"] >= kill_after
    assert report["added"] == 30 - report["unchanged"]
    con = sqlite3.connect(db)
    paths = [r[0] for r in con.execute("SELECT path FROM files")]
    assert len(paths) == len(set(paths)) == 30
    con.close()


def _children(pid: int) -> set[int]:
    """Pids of the processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _files(db: Path) -> list[tuple[str, str, bytes]]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute("SELECT path, hash, vec FROM files"))
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_with_workers_alive_then_restart_at_once(tmp_path, tiny, spec):
    folder = tmp_path / "many"
    make_photos(folder, 150)
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    backbone = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    cmd = [sys.executable, "-m", "p2w", "index", str(folder), *backbone, "--workers", "2", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = catalog_for(spec, p2w.Settings.from_env(env)) / "catalog.sqlite"
    workers: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.is_file() and _count(db) >= 4 and len(workers := _children(proc.pid)) >= 2:
            proc.send_signal(signal.SIGKILL)  # mid-index, its DataLoader workers alive
            break
        time.sleep(0.005)
    killed = time.monotonic()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    restart = subprocess.Popen([*cmd, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while any(_running(w) for w in workers) and time.monotonic() - killed < 10:
        time.sleep(0.01)
    lived = time.monotonic() - killed
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err  # not refused by a lock the dead run's workers kept
    assert lived < 1.0, f"{len(workers)} workers outlived their killed parent by {lived:.1f} s"
    report = json.loads(out)
    assert report["total"] == 150 and report["added"] == 150 - report["unchanged"] and report["unchanged"] >= 4
    clean = index([folder], spec, engine_factory(spec), p2w.Settings.from_env({"P2W_HOME": str(tmp_path)}), workers=0)
    resumed, fresh = _files(db), _files(clean.catalog / "catalog.sqlite")
    assert [r[:2] for r in resumed] == [r[:2] for r in fresh] and len({r[0] for r in resumed}) == 150
    for (_, _, a), (_, _, b) in zip(resumed, fresh, strict=True):
        np.testing.assert_allclose(np.frombuffer(a, np.float32), np.frombuffer(b, np.float32), atol=1e-5)


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return int(con.execute("SELECT count(*) FROM files").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_file_overwritten_with_known_content_is_an_update(lib, spec):
    index([lib], spec, engine_factory(spec), workers=0)
    a, b = sorted((lib / "2024").glob("*.jpg"))[:2]
    time.sleep(0.01)
    a.write_bytes(b.read_bytes())  # same content as b: its vector is reused, no model needed
    report = index([lib], spec, never, workers=0)
    assert (report.updated, report.added, report.moved, report.removed) == (1, 0, 0, 0)
    catalog = open_catalog(spec)
    hashes = {os.fsdecode(p): h for p, h in catalog.con.execute("SELECT path, hash FROM files")}
    assert hashes[str(a)] == hashes[str(b)]


def test_search_sheet_draws_the_query_and_its_results(lib, tiny, tmp_path):
    from PIL import Image as PILImage

    args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    assert runner.invoke(app, ["index", str(lib), *args, "--workers", "0"]).exit_code == 0
    query = sorted((lib / "2024").glob("*.jpg"))[0]
    sheet = tmp_path / ("a long folder name " * 4).strip() / "sheet.png"
    sheet.parent.mkdir()
    search = ["search", str(query), "--mode", "image", "-k", "10", *args, "--no-server", "--sheet", str(sheet)]
    result = runner.invoke(app, search)
    assert result.exit_code == 0, result.stderr
    assert f"contact sheet: {sheet}" in result.stderr.splitlines()
    with PILImage.open(sheet) as im:  # a query row and two rows of results (8 + 2), 128-pixel cells
        assert im.height == 6 + 3 * (128 + 6 + 14) and im.width == 150 + 8 * (128 + 6) + 6
    again = runner.invoke(app, search)
    assert again.exit_code == 1 and "exists; pass --force" in again.stderr
    assert runner.invoke(app, [*search, "--force"]).exit_code == 0
    wrong = runner.invoke(app, [*search[:-1], str(tmp_path / "sheet.jpg")])
    assert wrong.exit_code == 1 and "must end in .png" in wrong.stderr


def test_preview_notes_a_terminal_without_images_and_draws_where_one_has_them(lib, tiny, monkeypatch):
    import io

    from rich.console import Console
    from textual_image import renderable

    from p2w.cli.render import NO_PREVIEW, preview

    args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    assert runner.invoke(app, ["index", str(lib), *args, "--workers", "0"]).exit_code == 0
    result = runner.invoke(app, ["search", "a photo", *args, "--preview", "-k", "3"])
    assert result.exit_code == 0 and NO_PREVIEW in result.stderr.splitlines()  # not a terminal here
    catalog = open_catalog(BackboneSpec(str(tiny.config), str(tiny.weights)))
    hits = search(catalog, np.frombuffer(next(iter(catalog.vectors_for(catalog.ids()[:1]).values())), np.float32), k=2)
    catalog.close()
    monkeypatch.setattr(renderable, "Image", renderable.SixelImage)  # as detected in a sixel terminal
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    assert preview(hits, console)
    out = console.file.getvalue()
    assert out.count("\x1bP") == 2 and all(h.path in out for h in hits)  # one sixel image and one caption each
