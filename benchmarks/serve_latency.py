"""Where the time of `p2w serve` and of a warm `p2w search` goes, and how much memory the server holds.

    python benchmarks/serve_latency.py --n 100000
    python benchmarks/serve_latency.py --n 1000000 --json-out /tmp/serve-1m.json

Builds, in a temporary P2W_HOME, a catalog of ViT-B-32 with random weights (``--pretrained none``, 512-d): --photos
generated 640x480 JPEGs plus synthetic rows up to --n, each a hard link to one of those files (so every result exists
on disk, with the catalogued size and mtime), their unit vectors on a random 32-d subspace with 5% noise (as
``ann_quality.py --intrinsic 32``) and norms around 10; then the ANN index, as `p2w index` makes it
(``p2w.library.ann.build`` and ``save``), timed. A random mapper fitting ViT-B-32 is saved for pic2word queries.

Then it measures, after warm-up:

- in this process, ``p2w.serve.service.Service`` on the same catalog (the code the HTTP layer calls): a composed
  query refined from a catalog photo, a text query, an upload (decoding, the image tower alone, upload + search),
  and the composed query stage by stage (SQLite, mapper, tokenizer, text tower, graph, re-ranking, result rows);
- a real server (``python -m p2w serve ... --port 0``): the same requests over HTTP (urllib, a new connection
  each), a trivial request (a static asset: HTTP and the access checks alone), the server's VmRSS and VmHWM;
- the real `p2w search` in new processes through that server (text, and image + text with a fresh or an already
  uploaded image), the cold `--no-server` path; what the warm command imports (``python -X importtime``), the
  interpreter's start, and rendering the results table.

The in-process Service runs as the server's does (``p2w.serve.service.start``: the engine loaded on the thread that
then runs every call); its calls alternate with the HTTP requests, 50 ms apart, so that this shared machine's drift
hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

MODEL, PRETRAINED, DIM = "ViT-B-32", "none", 512
TEXT = "a red shirt"
TEXTS = ("a red shirt", "with a blue logo", "in black leather", "as a night photo")


def ms(values: list[float]) -> dict[str, float]:
    """p50 and p90 (ms) of durations in seconds."""
    a = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2)}


def interleaved(
    fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int, settle: float = 0.05
) -> dict[str, list[float]]:
    """Seconds of each ``fn(i)``, the functions called in turn for each ``i`` (after ``warmup`` rounds), ``settle``
    seconds apart, so that one process's threads (torch's OpenMP threads spin a while after their work) are idle
    when the other process's call starts."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            start = time.perf_counter()
            fn(i)
            if i >= warmup:
                out[name].append(time.perf_counter() - start)
    return out


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def structured(rng: np.random.Generator, m: int, basis: np.ndarray) -> np.ndarray:
    """``m`` unit vectors on the row space of ``basis`` (intrinsic, dim) plus 5% isotropic noise."""
    x = rng.standard_normal((m, basis.shape[0]), dtype=np.float32) @ basis
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    x += 0.05 * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1]) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_catalog(
    home: Path, backbone: str, n: int, photos: list[Path], times: dict[str, Any], chunk: int = 50_000
) -> None:
    """``n`` rows: the photos, then hard links to them; vectors and norms synthetic; then the ANN, as p2w index.
    Seconds and sizes go into ``times`` as they are known (a build stopped by the deadline keeps what it timed)."""
    from p2w.core.lock import writer_lock
    from p2w.library import ann as ann_mod
    from p2w.library.catalog import Catalog, catalog_dir

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((32, DIM), dtype=np.float32)
    stats = [os.stat(p) for p in photos]
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
    links = home / "links"
    folder = catalog_dir(home, backbone)
    catalog = Catalog(folder, backbone, dim=DIM, create=True)
    times |= {"link_s": 0.0, "fill_s": 0.0}
    for i in range(0, n, chunk):
        start = time.perf_counter()
        rows = []
        for j in range(i, min(n, i + chunk)):
            src = j % len(photos)
            if j < len(photos):
                path = photos[j]
            else:
                path = links / f"{j // 1000:04d}" / f"img{j:07d}.jpg"
                if j % 1000 == 0 or j == len(photos):
                    path.parent.mkdir(parents=True, exist_ok=True)
                os.link(photos[src], path)
            st = stats[src]
            rows.append((str(path), st.st_size, st.st_mtime_ns, hashes[src] if j < len(photos) else f"{j:064x}"))
        times["link_s"] += time.perf_counter() - start
        start = time.perf_counter()
        vectors = structured(rng, len(rows), basis)
        norms = 10.0 * np.exp(0.1 * rng.standard_normal(len(rows)))
        catalog.put([(*r, v.tobytes(), float(s)) for r, v, s in zip(rows, vectors, norms, strict=True)], DIM)
        times["fill_s"] += time.perf_counter() - start
        print(
            f"  catalog: {min(n, i + chunk):,} rows (links {times['link_s']:.0f} s, fill {times['fill_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    with writer_lock(folder):  # as p2w index's _finish_ann, for a catalog without an index yet
        start = time.perf_counter()
        ann = ann_mod.build(catalog)
        times["ann_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ann_mod.save(ann, folder)
        times["ann_save_s"] = time.perf_counter() - start
    times["graph_dim"] = ann.index.dim
    catalog.close()
    times["catalog_mb"] = round((folder / "catalog.sqlite").stat().st_size / 2**20, 1)
    times["index_mb"] = round(sum(p.stat().st_size for p in folder.glob("index-*.hnsw")) / 2**20, 1)
    print(f"  ANN: built in {times['ann_build_s']:.0f} s", file=sys.stderr, flush=True)


class Server:
    """A running ``python -m p2w serve`` and a plain urllib client (a new connection per request)."""

    def __init__(self, home: Path, env: dict[str, str], mapper: Path) -> None:
        start = time.perf_counter()
        self.log = (home / "serve.log").open("w")
        cmd = [sys.executable, "-m", "p2w", "serve", "--model", MODEL, "--pretrained", PRETRAINED]
        cmd += ["--device", "cpu", "--port", "0", "--mapper", str(mapper)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if not first.startswith("http://"):
            self.stop()
            raise SystemExit(f"p2w serve did not start: {first!r}; see {home / 'serve.log'}")
        self.url_s = time.perf_counter() - start
        self.base, self.token = first.split("/?token=")
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                self.get("/api/status")
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("p2w serve did not answer")
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - start

    def request(self, path: str, body: bytes | None = None, content_type: str = "application/json") -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=120) as response:
            # the server's own time, and its stages: "app;dur=12.3, compose;dur=9.8, ..."
            entries = (entry.split(";dur=") for entry in response.headers["Server-Timing"].split(", "))
            self.timing = {name: float(ms) for name, ms in entries}
            return response.read()

    def get(self, path: str) -> bytes:
        return self.request(path)

    def post(self, path: str, data: Any) -> Any:
        return json.loads(self.request(path, json.dumps(data).encode()))

    def upload(self, data: bytes) -> str:
        return json.loads(self.request("/api/upload", data, "application/octet-stream"))["upload"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def stages(service: Any, photo_ids: list[int], repeats: int, warmup: int, k: int = 24) -> dict[str, dict[str, float]]:
    """The composed query of ``Service.search`` (reference: a catalog photo, mode pic2word), stage by stage: the
    same calls in the same order, with a clock between them; then, apart, the mapper and the tokenizer, the two
    parts of composing that are not the text tower."""
    import torch

    from p2w.core.compose import fill, plan, prompt_ids
    from p2w.library.ann import CANDIDATES, default_ef, matrix

    engine, bb = service.engine, service.engine.backbone
    names = (
        "open_catalog_count",
        "current_ann_generation",
        "reference_row_and_lstat",
        "reference_vector_and_norm",
        "compose_query",
        "ann_graph",
        "ann_rerank_fetch",
        "ann_rerank_scores",
        "result_rows",
        "result_files_exist",
        "json",
    )
    out: dict[str, list[float]] = {name: [] for name in (*names, "total", "of_compose_mapper", "of_compose_tokenize")}
    n_hits = []
    for i in range(warmup + repeats):
        text = TEXTS[i % len(TEXTS)]
        t = [time.perf_counter()]
        catalog = service._open()
        t.append(time.perf_counter())
        ann = service._current_ann(catalog)
        t.append(time.perf_counter())
        row = service._servable(catalog, photo_ids[i % len(photo_ids)])
        t.append(time.perf_counter())
        norm = catalog.norms_for([row.id])[row.id]
        features = torch.from_numpy(np.frombuffer(catalog.vectors_for([row.id])[row.id], np.float32) * np.float32(norm))
        t.append(time.perf_counter())
        query = engine.encode_query_features(features, text, "pic2word", None)
        t.append(time.perf_counter())
        want = 2 * k + 8  # what p2w.library.search asks the index for
        if ann.projection is not None:  # Ann.query on a reduced graph, split
            c = min(ann.live, max(want, CANDIDATES))
            ann.index.set_ef(max(default_ef(ann.index.dim), c))
            labels, _ = ann.index.knn_query(ann.projection.apply(query[None]), k=c)
            t.append(time.perf_counter())
            found, vectors = matrix(catalog.vectors_for([int(x) for x in labels[0]]))
            t.append(time.perf_counter())
            scores = vectors @ query
            top = np.argsort(-scores, kind="stable")[:want]
            found, scores = found[top], scores[top]
            t.append(time.perf_counter())
        else:
            found, scores = ann.query(query, want)
            t += [time.perf_counter()] * 3
        rows = catalog.rows_for([int(x) for x in found])
        t.append(time.perf_counter())
        hits = []
        for x, score in zip(found, scores, strict=True):
            r = rows.get(int(x))
            if r is not None and os.path.exists(r.path):
                hits.append({"rank": len(hits) + 1, "score": float(score), "path": r.path, "id": int(x)})
                if len(hits) == k:
                    break
        t.append(time.perf_counter())
        json.dumps({"results": hits}, ensure_ascii=False, separators=(",", ":"))
        t.append(time.perf_counter())
        with torch.inference_mode():
            m0 = time.perf_counter()
            engine.mapper(features.reshape(1, -1))
            m1 = time.perf_counter()
            prompt_ids(bb, [fill(plan("pic2word", 1, True, None, engine.default_prompt).template, text)], 1)
            m2 = time.perf_counter()
        if i >= warmup:
            for name, a, b in zip(names, t[:-1], t[1:], strict=True):
                out[name].append(b - a)
            out["total"].append(t[-1] - t[0])
            out["of_compose_mapper"].append(m1 - m0)
            out["of_compose_tokenize"].append(m2 - m1)
            n_hits.append(len(hits))
    assert min(n_hits) == k, n_hits
    return {name: ms(v) for name, v in out.items()}


def measure(
    server: Server, service: Any, uploads: list[bytes], photo_ids: list[int], R: int, W: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Service in this process and the server over HTTP, in turn. Call it as the server runs its Service: on
    the thread ``p2w.serve.service.start`` loaded the engine on, where the SQLite connection is opened and stays."""
    import torch

    from p2w.core.images import decode_image
    from p2w.serve.requests import Query

    http: dict[str, Any] = {}
    engine = service.engine
    start = time.perf_counter()
    service.search(Query(text=TEXT, mode="text"))  # opens the catalog, loads the index
    inproc: dict[str, Any] = {"first_search_ms": round(1000 * (time.perf_counter() - start), 1)}

    def photo_query(i: int) -> dict[str, Any]:
        return {"photo": photo_ids[i], "text": TEXTS[i % 4], "mode": "pic2word"}

    # in process and over HTTP in turn, so that the machine's drift hits both alike
    t = interleaved(
        {
            "in_photo_pic2word": lambda i: service.search(Query(**photo_query(i))),
            "http_photo_pic2word": lambda i: server.post("/api/search", photo_query(i)),
            "in_text": lambda i: service.search(Query(text=TEXTS[i % 4], mode="text")),
            "http_text": lambda i: server.post("/api/search", {"text": TEXTS[i % 4], "mode": "text"}),
            "http_static_asset": lambda i: server.get("/assets/style.css"),
        },
        R,
        W,
    )
    inproc["stages_photo_pic2word"] = stages(service, photo_ids, R, W)
    bb = engine.backbone
    decoded = [decode_image(u, "the upload", bb.draft_size) for u in uploads[: W + R]]
    pixels = [bb.preprocess(im)[None] for im in decoded]
    keys: dict[int, str] = {}

    def tower(i: int) -> None:
        with torch.inference_mode():
            bb.encode_image(pixels[i])

    def upload_in(i: int) -> None:
        keys[i] = service.upload(uploads[i])["upload"]

    def upload_http(i: int) -> None:
        keys[-i - 1] = server.upload(uploads[i])

    def again_http(i: int) -> None:
        key = server.upload(uploads[0])  # held by the server: no image tower
        server.post("/api/search", {"upload": key, "text": TEXTS[i % 4], "mode": "pic2word"})

    t |= interleaved(
        {
            "in_upload_decode": lambda i: decode_image(uploads[i], "the upload", bb.draft_size),
            "in_upload_preprocess": lambda i: bb.preprocess(decoded[i]),
            "in_image_tower": tower,
            "in_engine_image_features": lambda i: engine.image_features([decoded[i]]),
            "in_upload_new": upload_in,
            "in_search_after_upload": lambda i: service.search(
                Query(upload=keys[i], text=TEXTS[i % 4], mode="pic2word")
            ),
            "http_upload_new": upload_http,
            "http_search_after_upload": lambda i: server.post(
                "/api/search", {"upload": keys[-i - 1], "text": TEXTS[i % 4], "mode": "pic2word"}
            ),
            "http_upload_again_and_search": again_http,
        },
        R,
        W,
    )
    t["http_upload_new_and_search"] = [
        a + b for a, b in zip(t["http_upload_new"], t["http_search_after_upload"], strict=True)
    ]
    one_thread = {}  # the towers with one torch thread: what a busy 2-core machine leaves a query
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_thread = {
            f"{name}_1_thread": ms(v)
            for name, v in interleaved(
                {"in_photo_pic2word": lambda i: service.search(Query(**photo_query(i))), "in_image_tower": tower},
                R,
                W,
            ).items()
        }
    finally:
        torch.set_num_threads(threads)
    service.close()
    for name, v in t.items():
        (inproc if name.startswith("in_") else http)[name[name.index("_") + 1 :]] = ms(v)
    inproc |= {k[3:]: v for k, v in one_thread.items()}
    return inproc, http


def alone(
    server: Server, uploads: list[bytes], photo_ids: list[int], R: int, W: int, gap: float = 0.05
) -> dict[str, Any]:
    """The server by itself (nothing else of the benchmark running), as one user at a time: requests ``gap`` seconds
    apart, each its wall time over HTTP and its time in the app and the app's stages (the ``Server-Timing`` header):
    composed queries from a catalog photo, and (with ``uploads``, images the server has not seen) an upload and the
    search after it, sent at once as the page sends it; ``beyond_tower``: both requests' time in the app less the
    upload's image tower."""
    wall: dict[str, list[float]] = {}
    app: dict[str, list[float]] = {}

    def timed(name: str, i: int, fn: Callable[[], Any], pause: float | None = None) -> Any:
        time.sleep(gap if pause is None else pause)
        start = time.perf_counter()
        out = fn()
        if i >= W:
            wall.setdefault(name, []).append(time.perf_counter() - start)
            for stage, value in server.timing.items():
                app.setdefault(name if stage == "app" else f"{name}.{stage}", []).append(value / 1000)
        return out

    for i in range(W + R):
        photo = {"photo": photo_ids[i], "text": TEXTS[i % 4], "mode": "pic2word"}
        timed("photo_pic2word", i, lambda: server.post("/api/search", photo))  # noqa: B023 (called at once)
        if not uploads:
            continue
        key = timed("upload_new", i, lambda: server.upload(uploads[i]))  # noqa: B023
        query = {"upload": key, "text": TEXTS[i % 4], "mode": "pic2word"}
        # at once, as the page sends it (app.js: the search follows the upload's answer)
        timed("search_after_upload", i, lambda: server.post("/api/search", query), pause=0)  # noqa: B023
    for d in (wall, app) if uploads else ():
        d["upload_new_and_search"] = [a + b for a, b in zip(d["upload_new"], d["search_after_upload"], strict=True)]
    if uploads:
        pairs = zip(app["upload_new_and_search"], app["upload_new.tower"], strict=True)
        app["upload_new_and_search.beyond_tower"] = [both - tower for both, tower in pairs]
    return {"wall": {k: ms(v) for k, v in wall.items()}, "app": {k: ms(v) for k, v in app.items()}}


def import_profile(cmd: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    """``python -X importtime`` of the real command: the wall time, the imports' total, the top-level imports of 5
    ms or more (medians over ``runs``), and whether torch was imported."""
    walls, totals, top, torch = [], [], {}, False
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
        total = 0
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _, cumulative, name = line.split("|")
            torch = torch or name.strip() == "torch"
            if not name.startswith("  "):  # a top-level import (not one made inside another)
                total += int(cumulative)
                top.setdefault(name.strip(), []).append(int(cumulative) / 1000)
        totals.append(total / 1000)
    big = {k: round(statistics.median(v), 1) for k, v in top.items() if statistics.median(v) >= 5}
    return {
        "wall_ms": round(1000 * statistics.median(walls), 1),
        "imports_ms": round(statistics.median(totals), 1),
        "torch_imported": torch,
        "top_imports_ms": dict(sorted(big.items(), key=lambda kv: -kv[1])),
    }


def render_ms(hits: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    """The results table as `p2w search` prints it (p2w.cli.render.hits_table), to a file-like console."""
    import io

    from rich.console import Console

    from p2w.cli.render import hits_table
    from p2w.library.catalog import Hit

    rows = [Hit(h["rank"], h["score"], h["path"], h["size"], h["mtime"], h["id"]) for h in hits]
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        Console(file=io.StringIO(), width=80).print(hits_table(rows))
        out.append(time.perf_counter() - start)
    return ms(out)


def run_cli(args: list[str], env: dict[str, str], warm: bool) -> float:
    """Wall seconds of one `p2w ...` process; checks that it was answered by the server (or not)."""
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr}")
    served = "searched through p2w serve" in done.stderr
    if served != warm:
        raise SystemExit(f"{' '.join(args)}: expected {'a warm' if warm else 'a cold'} search: {done.stderr}")
    return wall


def walls(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        out.append(time.perf_counter() - start)
    return out


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Stop the catalog build when it runs past ``seconds`` (checked between hnswlib's batches)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"building the catalog took over {seconds:.0f} s: stopped")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="catalog vectors")
    ap.add_argument("--photos", type=int, default=300, help="real JPEG files the rows link to")
    ap.add_argument("--repeats", type=int, default=50, help="timed repetitions of each request")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cli-repeats", type=int, default=20, help="warm `p2w search` processes of each kind")
    ap.add_argument("--cold-repeats", type=int, default=3, help="`p2w search --no-server` processes of each kind")
    ap.add_argument("--max-build-minutes", type=float, default=15, help="stop when the catalog takes longer")
    ap.add_argument("--workdir", default=None, help="where the temporary P2W_HOME goes (default: the temp dir)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON line to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_photos import make

    home = Path(tempfile.mkdtemp(prefix="p2w-serve-", dir=args.workdir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2W_")}
    env |= {"P2W_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for key in [k for k in os.environ if k.startswith("P2W_")]:
        del os.environ[key]
    os.environ["P2W_HOME"] = str(home)
    server: Server | None = None
    result: dict[str, Any] = {"n": args.n, "model": f"{MODEL}/{PRETRAINED}", "load_before": os.getloadavg()}
    try:
        import torch

        from p2w.mappers.files import save_mapper
        from p2w.mappers.network import Mapper
        from p2w.settings import Settings

        settings = Settings.from_env()
        backbone = settings.backbone(MODEL, PRETRAINED).id
        result |= {"backbone": backbone, "torch": torch.__version__, "threads": torch.get_num_threads()}
        photos = make(home / "photos", args.photos)
        WR = args.warmup + args.repeats
        upload_files = make(home / "uploads", 2 * WR + args.cli_repeats, seed=1)
        uploads = [f.read_bytes() for f in upload_files]  # distinct images: the server keeps features by content
        upload_files = upload_files[2 * WR :]  # for `p2w search IMAGE`: not yet uploaded
        mapper = home / "mapper.safetensors"
        # ViT-B-32: 512-d features, 512-wide tokens; made on a thread of its own that ends, as torch work on this
        # thread would leave a second OpenMP team in this process beside the Service's (see p2w.serve.service.start)
        with ThreadPoolExecutor(1) as once:
            once.submit(lambda: save_mapper(Mapper(DIM, DIM), mapper, backbone)).result()
        start = time.perf_counter()
        build: dict[str, Any] = {}
        result["build"] = build
        try:
            with deadline(60 * args.max_build_minutes):
                build_catalog(home, backbone, args.n, photos, build)
        finally:
            build["total_s"] = time.perf_counter() - start
            build |= {k: round(v, 2) for k, v in build.items() if isinstance(v, float)}
        gc.collect()
        os.sync()  # the catalog's pages are written back now, not while requests are timed
        rng = np.random.default_rng(1)
        photo_ids = [int(x) for x in rng.integers(1, args.n + 1, args.warmup + args.repeats)]
        R, W = args.repeats, args.warmup

        # ---- the server, and the same Service in this process ---------------------------------------------------
        result["load_before_server"] = os.getloadavg()
        server = Server(home, env, mapper)
        http: dict[str, Any] = {"start_to_url_s": round(server.url_s, 2), "start_to_ready_s": round(server.ready_s, 2)}
        mem = {"after_start": memory(server.proc.pid)}
        start = time.perf_counter()
        server.post("/api/search", {"text": TEXT, "mode": "text"})
        http["first_search_ms"] = round(1000 * (time.perf_counter() - start), 1)
        mem["after_first_search"] = memory(server.proc.pid)
        import p2w
        from p2w.serve.service import start as start_service

        service, worker = start_service(
            lambda: p2w.load(model=MODEL, pretrained=PRETRAINED, mapper=str(mapper), device="cpu"), settings
        )
        with worker:
            inproc, timed = worker.submit(measure, server, service, uploads[:WR], photo_ids, R, W).result()
            worker.submit(service.close).result()
        http |= timed
        result["server_alone"] = alone(server, uploads[WR : 2 * WR], photo_ids, R, W)
        result["server_alone_1s"] = alone(server, [], photo_ids, min(R, max(10, R // 3)), W, gap=1.0)
        mem["after_http_searches"] = memory(server.proc.pid)
        result["in_process"], result["http"] = inproc, http
        result["sizes"] = {"upload_bytes_mean": round(statistics.mean(len(u) for u in uploads)), "image": "640x480"}

        # ---- `p2w search` through the server, and cold --------------------------------------------------------
        p2w_cmd = [shutil.which("p2w") or sys.executable] + ([] if shutil.which("p2w") else ["-m", "p2w"])
        base = [*p2w_cmd, "search"]
        opts = ["--model", MODEL, "--pretrained", PRETRAINED]
        with_image = ["--mapper", str(mapper), *opts]
        cli: dict[str, Any] = {"command": " ".join(p2w_cmd)}
        C = args.cli_repeats
        run_cli([*base, TEXT, *opts], env, warm=True)  # warm-up: the page cache
        cli["warm_text"] = ms([run_cli([*base, TEXT, *opts], env, warm=True) for _ in range(C)])
        cli["warm_image_new"] = ms([run_cli([*base, str(f), TEXT, *with_image], env, warm=True) for f in upload_files])
        same = str(upload_files[0])
        cli["warm_image_again"] = ms([run_cli([*base, same, TEXT, *with_image], env, warm=True) for _ in range(C)])
        mem["after_cli_searches"] = memory(server.proc.pid)
        cli["importtime_warm_text"] = import_profile(["-m", "p2w", "search", TEXT, *opts], env, 5)
        cli["importtime_warm_image"] = import_profile(["-m", "p2w", "search", same, TEXT, *with_image], env, 5)
        cli["render"] = render_ms(server.post("/api/search", {"text": TEXT, "mode": "text", "k": 10})["results"], 20)
        cli["python_start"] = ms(walls([sys.executable, "-c", "pass"], env, 10))
        cli["python_import_p2w_cli"] = ms(walls([sys.executable, "-c", "import p2w.cli"], env, 10))
        cli["p2w_help"] = ms(walls([*p2w_cmd, "--help"], env, 5))
        nos = ["--no-server"]
        K = args.cold_repeats
        cli["cold_text"] = ms([run_cli([*base, TEXT, *opts, *nos], env, warm=False) for _ in range(K)])
        cli["cold_image"] = ms([run_cli([*base, same, TEXT, *with_image, *nos], env, warm=False) for _ in range(K)])
        result["cli"] = cli
        mem["at_end"] = memory(server.proc.pid)
        result["server_memory_mb"] = mem
        result["load_after"] = os.getloadavg()
    except TimeoutError as exc:
        result["stopped"] = str(exc)
    finally:
        if server is not None:
            server.stop()
            result["server_exit"] = server.proc.returncode
        shutil.rmtree(home, ignore_errors=True)
    if "stopped" in result:
        print(f"stopped: {result['stopped']}; what was timed: {result['build']}", file=sys.stderr)
    else:
        report(result)
    line = json.dumps(result)
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")
    if "stopped" in result:
        raise SystemExit(1)


def report(r: dict[str, Any]) -> None:
    """The table: p50 / p90 in ms unless marked."""
    rows: list[tuple[str, str]] = []

    def add(label: str, v: dict[str, float] | float | str) -> None:
        rows.append((label, f"{v['p50']:.2f} / {v['p90']:.2f}" if isinstance(v, dict) else str(v)))

    b, i, h, c = r["build"], r["in_process"], r["http"], r["cli"]
    add(f"catalog: links / fill / ANN build ({b['graph_dim']}-d graph) / save, s", "")
    rows[-1] = (rows[-1][0], f"{b['link_s']} / {b['fill_s']} / {b['ann_build_s']} / {b['ann_save_s']}")
    add("catalog.sqlite / index file (MiB)", f"{b['catalog_mb']} / {b['index_mb']}")
    add("in process: composed query from a catalog photo", i["photo_pic2word"])
    add("in process: text query", i["text"])
    for name, v in i["stages_photo_pic2word"].items():
        add(f"  stage: {name}", v)
    for name in ("upload_decode", "upload_preprocess", "image_tower", "engine_image_features"):
        add(f"in process: {name}", i[name])
    add("in process: Service.upload (new image)", i["upload_new"])
    add("in process: search after upload", i["search_after_upload"])
    add("in process, 1 torch thread: composed query from a catalog photo", i["photo_pic2word_1_thread"])
    add("in process, 1 torch thread: image tower", i["image_tower_1_thread"])
    add("server: start to URL / to ready (s)", f"{h['start_to_url_s']} / {h['start_to_ready_s']}")
    add("http: first search (loads the index), ms", h["first_search_ms"])
    for name in ("static_asset", "photo_pic2word", "text", "upload_new", "search_after_upload"):
        add(f"http: {name}", h[name])
    add("http: upload (new) + search", h["upload_new_and_search"])
    add("http: upload (held) + search", h["upload_again_and_search"])
    for key, pace in (("server_alone", "50 ms apart"), ("server_alone_1s", "1 s apart")):
        for name, v in r[key]["app"].items():
            add(f"server alone, {pace}: {name}: in the app (Server-Timing)", v)
            if name in r[key]["wall"]:
                add(f"server alone, {pace}: {name}: wall over HTTP", r[key]["wall"][name])
    for name in ("warm_text", "warm_image_new", "warm_image_again", "cold_text", "cold_image"):
        add(f"p2w search: {name} (wall)", c[name])
    for name in ("python_start", "python_import_p2w_cli", "p2w_help"):
        add(f"process: {name} (wall)", c[name])
    for kind in ("text", "image"):
        p = c[f"importtime_warm_{kind}"]
        add(
            f"warm {kind} search, -X importtime: wall / imports ms, torch?",
            f"{p['wall_ms']} / {p['imports_ms']}, {p['torch_imported']}",
        )
        add("  top-level imports ms", ", ".join(f"{k} {v}" for k, v in list(p["top_imports_ms"].items())[:6]))
    add("render the results table (in process)", c["render"])
    for name, v in r["server_memory_mb"].items():
        add(f"server memory {name}: VmRSS / VmHWM (MiB)", f"{v['VmRSS']} / {v['VmHWM']}")
    width = max(len(label) for label, _ in rows)
    print(f"n = {r['n']:,}, {r['backbone']}, torch {r['torch']}, {r['threads']} threads; p50 / p90 ms")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
