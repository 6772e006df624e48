"""`p2w embed dataset`: folders, lists and webdataset shards into clip-retrieval's layout, part by part; read back with
numpy and pyarrow alone, as a third party would; the same vectors as `p2w embed image`; resume, kill -9, bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import p2w
from p2w.core.backbone import Backbone
from p2w.datasets.embed import Options, embed_dataset
from p2w.errors import P2WError
from p2w.spec import BackboneSpec


def _jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _folder(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = root / f"img {i:02d}.jpg"
        path.write_bytes(_jpeg(i))
        out.append(path)
    return out


def _shard(path: Path, first: int, n: int, bad: bool = False) -> list[str]:
    """An img2dataset shard: KEY.jpg, KEY.txt, KEY.json; with ``bad``, a key without an image and a corrupt jpg."""
    keys = []
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(first, first + n):
            key = f"{i:09d}"
            add(f"{key}.jpg", _jpeg(100 + i))
            add(f"{key}.txt", f"a photo number {i}".encode())
            add(f"{key}.json", json.dumps({"url": f"https://x/{i}.jpg", "exif": {"Make": "Cam", "ISO": i}}).encode())
            keys.append(key)
        if bad:
            add("999999998.txt", b"a caption without its image")
            add("999999999.jpg", b"\xff\xd8\xff not really a jpeg")
    return keys


@pytest.fixture
def spec(tiny) -> BackboneSpec:
    return BackboneSpec(str(tiny.config), str(tiny.weights))


def loader(spec: BackboneSpec, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    def load() -> Backbone:
        if calls is not None:
            calls.append(1)
        return Backbone.load(spec, device="cpu")

    return load


def read_layout(out: Path) -> tuple[np.ndarray, list[dict]]:
    """The layout as a third party reads it: numpy and pyarrow, nothing of p2w."""
    vectors = [np.load(p) for p in sorted((out / "img_emb").glob("img_emb_*.npy"))]
    rows = [r for p in sorted((out / "metadata").glob("metadata_*.parquet")) for r in pq.read_table(p).to_pylist()]
    return np.concatenate(vectors), rows


def test_a_folder_gives_the_vectors_of_p2w_embed_image(spec, tiny, tmp_path):
    photos = _folder(tmp_path / "photos", 7)
    out = tmp_path / "emb"
    report = embed_dataset(
        [str(tmp_path / "photos")], out, spec, loader(spec), Options(rows_per_part=3, dtype="float32")
    )
    assert (report.parts, report.written, report.rows) == (3, 3, 7) and not report.problems.counts()
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    vectors, rows = read_layout(out)
    assert vectors.dtype == np.float32 and vectors.shape == (7, 32)
    assert [r["image_path"] for r in rows] == [str(p) for p in photos]
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=None, device="cpu")
    np.testing.assert_allclose(vectors, engine.encode_images([str(p) for p in photos]), atol=1e-5, rtol=0)
    features = engine.encode_images([str(p) for p in photos], normalize=False)
    norms = np.array([r["norm"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(vectors * norms[:, None], features, rtol=1e-5, atol=1e-6)  # mappers read these
    assert [r["hash"] for r in rows] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
    manifest = json.loads((out / "p2w.json").read_text())
    assert manifest["backbone"] == spec.id and manifest["dim"] == 32 and manifest["parts"] == 3


def test_shards_with_captions_metadata_and_bad_members(spec, tiny, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    keys = _shard(shards / "00000.tar", 0, 4) + _shard(shards / "00001.tar", 4, 3, bad=True)
    out = tmp_path / "emb"
    report = embed_dataset([str(shards / "{00000..00001}.tar")], out, spec, loader(spec), Options(text=True))
    assert (report.parts, report.rows) == (2, 7)
    assert report.problems.counts() == {"no image": 1, "not an image": 1}
    vectors, rows = read_layout(out)
    assert vectors.dtype == np.float16 and np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-3)
    assert [r["image_path"] for r in rows] == keys and rows[5]["caption"] == "a photo number 5"
    assert rows[2]["url"] == "https://x/2.jpg" and rows[2]["exif.Make"] == "Cam" and rows[2]["exif.ISO"] == 2
    text = np.concatenate([np.load(p) for p in sorted((out / "text_emb").glob("*.npy"))]).astype(np.float32)
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=None, device="cpu")
    expected = engine.encode_texts([r["caption"] for r in rows])
    np.testing.assert_allclose(text, expected, atol=2e-3, rtol=0)  # float16 rounding
    saved = json.loads((out / "report.json").read_text())
    assert {r: v["count"] for r, v in saved["problems"].items()} == {"no image": 1, "not an image": 1}
    assert saved["problems"]["no image"]["examples"] == [f"{shards / '00001.tar'}:999999998"]


def test_a_rerun_resumes_and_another_backbone_is_refused(spec, tmp_path):
    _folder(tmp_path / "photos", 8)
    out = tmp_path / "emb"
    source = [str(tmp_path / "photos")]
    embed_dataset(source, out, spec, loader(spec), Options(rows_per_part=3))
    (out / "metadata" / "metadata_1.parquet").unlink()  # as if killed while part 1 was written
    calls: list[int] = []
    again = embed_dataset(source, out, spec, loader(spec, calls), Options(rows_per_part=3))
    assert (again.written, again.resumed, again.rows) == (1, 2, 3) and calls == [1]
    done = embed_dataset(source, out, spec, loader(spec, calls), Options(rows_per_part=3))
    assert (done.written, done.resumed) == (0, 3) and calls == [1]  # nothing left: no model loaded
    other = BackboneSpec(spec.model, "none")
    with pytest.raises(P2WError, match=r"holds embeddings of .*, not .*random"):
        embed_dataset(source, out, other, loader(other, calls), Options(rows_per_part=3))
    with pytest.raises(P2WError, match="other rows per part"):
        embed_dataset(source, out, spec, loader(spec), Options(rows_per_part=4))
    assert calls == [1]


def test_kill_9_then_a_rerun_leaves_every_row_once(tiny, tmp_path):
    photos = _folder(tmp_path / "photos", 40)
    out = tmp_path / "emb"
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "p2w", "embed", "dataset", str(tmp_path / "photos"), "--out", str(out)]
    cmd += ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--part-rows", "2", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def parts_done() -> int:
        return len(list((out / "metadata").glob("*.parquet"))) if (out / "metadata").is_dir() else 0

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and parts_done() < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] >= 3 and summary["resumed"] + summary["written"] == 20
    vectors, rows = read_layout(out)
    assert sorted(r["image_path"] for r in rows) == sorted(str(p) for p in photos)  # each once
    assert len(vectors) == 40 and not list(out.rglob("*.tmp"))


# ---- on Ray (one local cluster per session: the `ray_cluster` fixture) ---------------------------------------------
@pytest.mark.slow
def test_on_ray_the_layout_is_the_one_this_process_writes(spec, tmp_path, ray_cluster):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", 0, 3)
    _shard(shards / "00001.tar", 3, 4, bad=True)
    _folder(tmp_path / "photos", 5)
    sources = [str(shards / "0000{0,1}.tar"), str(tmp_path / "photos")]
    options = Options(rows_per_part=2, dtype="float32", text=True)
    here = embed_dataset(sources, tmp_path / "here", spec, loader(spec), options)
    there = embed_dataset(sources, tmp_path / "ray", spec, loader(spec), options, ray="auto")
    assert (there.engine, there.parts, there.rows) == ("auto", here.parts, here.rows) == ("auto", 5, 12)
    assert there.problems.counts() == here.problems.counts() == {"no image": 1, "not an image": 1}
    for name in ("img_emb", "text_emb", "metadata"):
        assert sorted(p.name for p in (tmp_path / "ray" / name).iterdir()) == sorted(
            p.name for p in (tmp_path / "here" / name).iterdir()
        )
    a, rows_a = read_layout(tmp_path / "here")
    b, rows_b = read_layout(tmp_path / "ray")
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)  # a Ray worker runs torch on 1 thread: another sum order
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k != "norm"} == {k: v for k, v in rb.items() if k != "norm"}
        assert abs(ra["norm"] - rb["norm"]) <= 1e-6 * ra["norm"]
    stages = "\n".join(json.loads((tmp_path / "ray" / "report.json").read_text())["ray_stats"])
    assert (
        "_decode" in stages and "_Tower" in stages and "Remote wall time" in stages
    )  # Ray Data's per-stage statistics
    assert "ray_stats" not in json.loads((tmp_path / "here" / "report.json").read_text())


@pytest.mark.slow
def test_on_ray_a_tower_worker_killed_mid_run_leaves_every_row_once(spec, tmp_path, ray_cluster):
    import threading

    photos = _folder(tmp_path / "photos", 60)
    out = tmp_path / "emb"
    result: dict[str, object] = {}

    def run() -> None:
        options = Options(rows_per_part=1, batch_size=1)
        result["report"] = embed_dataset([str(tmp_path / "photos")], out, spec, loader(spec), options, ray="auto")

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        done = len(list((out / "metadata").glob("*.parquet"))) if (out / "metadata").is_dir() else 0
        workers = _tower_workers()
        if done >= 1 and workers:
            killed = (workers[0], done)
            os.kill(workers[0], signal.SIGKILL)
        time.sleep(0.005)
    thread.join(timeout=300)
    assert killed is not None and killed[1] < 60, "the run finished before a tower worker could be killed"
    report = result["report"]
    assert report.parts == 60  # type: ignore[attr-defined]
    vectors, rows = read_layout(out)
    assert sorted(r["image_path"] for r in rows) == sorted(str(p) for p in photos) and len(vectors) == 60


def _tower_workers() -> list[int]:
    """Pids of the Ray worker processes running the tower actor (their title names it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"_Tower" in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_the_command_on_a_private_local_cluster(tiny, tmp_path):
    """`--ray local` from the command line: a cluster of its own, started and stopped by the run."""
    _folder(tmp_path / "photos", 4)
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "p2w", "embed", "dataset", str(tmp_path / "photos"), "--out", str(out), "--json"]
    cmd += ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--ray", "local", "--part-rows", "2"]
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home"), "RAY_ADDRESS": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["engine"], summary["parts"], summary["rows"]) == ("local", 2, 4)
    vectors, rows = read_layout(out)
    assert len(vectors) == 4 and [r["image_path"] for r in rows] == sorted(
        str(p) for p in (tmp_path / "photos").iterdir()
    )
    cmd[cmd.index("local")] = "nowhere:1"
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "unknown --ray address" in bad.stderr
