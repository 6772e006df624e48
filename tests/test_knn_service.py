"""`p2w search --knn-service URL --knn-index NAME` against a clip-retrieval back end: a real HTTP server on loopback,
written here from the back end's documented request and answer (POST /knn-service with `embedding_input`,
`modality`, `num_images`, `indice_name`; a JSON list of {url, caption, id, similarity}; GET /indices-list), answering
every failure as clip_back does (HTTP 500, {"message": "Internal Server Error"})."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from p2w.cli import app
from p2w.datasets.knn_service import KnnService
from p2w.errors import P2WError
from serving import loopback

runner = CliRunner()
DIM = 32  # the tiny CLIP's width


class Backend:
    """What the fake back end holds and what it was asked."""

    def __init__(self, dim: int = DIM, rows: int = 60, delay: float = 0.0, answer: bytes | None = None) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        self.vectors = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.delay, self.answer = delay, answer
        self.bodies: list[dict[str, Any]] = []

    def knn(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        modality, num_images, name = body["modality"], body["num_images"], body["indice_name"]  # required keys
        index = {"laion-like": self.vectors, "other": self.vectors}[name]  # KeyError: HTTP 500, as clip_back
        query = np.expand_dims(np.array(body["embedding_input"]).astype("float32"), 0)
        scores = (query @ index.T)[0] if modality == "image" else None  # a width mismatch raises: HTTP 500
        assert scores is not None
        top = np.argsort(-scores)[: body.get("num_result_ids", num_images)]
        return [{"url": f"https://img.example/{i}.jpg", "caption": f"caption {i}", "NSFW": "UNLIKELY",
                 "id": int(i), "similarity": float(scores[i])} for i in top[:num_images]]  # fmt: skip


@contextlib.contextmanager
def serve(backend: Backend) -> Iterator[str]:
    """The fake back end on loopback for the block: its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def send(self, code: int, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path == "/indices-list":
                self.send(200, json.dumps(["laion-like", "other"]).encode())
            else:
                self.send(404, b'{"message": "Not Found"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            backend.bodies.append(body)
            time.sleep(backend.delay)
            if backend.answer is not None:
                return self.send(200, backend.answer)
            try:
                self.send(200, json.dumps(backend.knn(body)).encode())
            except Exception:
                self.send(500, b'{"message": "Internal Server Error"}')

    with loopback(Handler) as url:
        yield url


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def url(backend: Backend) -> Iterator[str]:
    with serve(backend) as address:
        yield address


def test_the_query_goes_as_a_unit_embedding_and_hits_come_back_in_rank_order(url, backend):
    service = KnnService(url, "laion-like")
    query = 3.0 * backend.vectors[7] + 0.1 * backend.vectors[8]  # not unit: p2w sends it normalised
    hits = service.search(query, 5)
    sent = backend.bodies[-1]
    assert (sent["modality"], sent["num_images"], sent["indice_name"]) == ("image", 5, "laion-like")
    assert abs(np.linalg.norm(sent["embedding_input"]) - 1) < 1e-9
    expected = np.argsort(-(backend.vectors @ query))[:5].tolist()
    assert [h.id for h in hits] == expected and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].url == f"https://img.example/{expected[0]}.jpg" and hits[0].caption == f"caption {expected[0]}"
    assert hits[0].to_json()["path"] == hits[0].url  # no image_path: the URL is where the image is
    assert service.features(expected[0]) is None and service.local_file(expected[0]) is None  # nothing remote opened
    assert KnnService(url, None).index == "laion-like"  # no name: the back end's first, as clip_back does


def test_an_unknown_index_a_wrong_width_and_bad_addresses_are_one_line_errors(url, backend):
    with pytest.raises(P2WError, match="has no index 'laion5B'; it has: laion-like, other"):
        KnnService(url, "laion5B")
    assert backend.bodies == []  # refused before any query
    service = KnnService(url, "other")
    with pytest.raises(P2WError, match=r"HTTP 500.*\(768-d\).*--model"):
        service.search(np.ones(768, dtype=np.float32), 3)
    with pytest.raises(P2WError, match="takes an http"):
        KnnService("ftp://example.org", None)
    with pytest.raises(P2WError, match="cannot reach the knn-service"):
        KnnService("http://127.0.0.1:9", None)  # the discard port: nothing listens


def test_a_slow_or_strange_back_end_is_an_error_not_a_hang_or_a_crash():
    slow = Backend(delay=2.0)
    with serve(slow) as address:
        service = KnnService(address, "laion-like", timeout=0.5)
        with pytest.raises(P2WError, match=r"did not answer in 0\.5 s"):
            service.search(slow.vectors[0], 3)
    for answer, message in ((b"<html>", "did not answer JSON"), (b'{"a": 1}', "not a list"),
                            (b'[{"id": 1}]', "without a similarity")):  # fmt: skip
        with serve(Backend(answer=answer)) as address, pytest.raises(P2WError, match=message):
            KnnService(address, None).search(np.ones(DIM, dtype=np.float32), 1)


def test_search_knn_service_from_the_command_line(url, backend, tiny, images):
    args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--device", "cpu"]
    found = runner.invoke(app, ["search", str(images[0]), "in red", "--mapper", str(tiny.mapper), "--knn-service",
                                url, "--knn-index", "laion-like", "-k", "3", "--json", *args])  # fmt: skip
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and all(h["url"].startswith("https://img.example/") and "caption" in h for h in hits)
    assert len(backend.bodies[-1]["embedding_input"]) == DIM
    table = runner.invoke(app, ["search", "red", "--knn-service", url, "-k", "2", *args])
    assert table.exit_code == 0 and "caption" in table.stdout and "1970" not in table.stdout  # no size, no date
    lonely = runner.invoke(app, ["search", "red", "--knn-index", "laion-like", *args])
    assert lonely.exit_code == 1 and "give the URL too" in lonely.stderr
