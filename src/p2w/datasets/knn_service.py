"""``KnnService``: a running clip-retrieval back end (``clip_back``) as a ``p2w.core.gallery.Gallery``.

p2w encodes the query itself (every query kind, the mapper included) and sends only the vector: ``POST
URL/knn-service`` with the JSON body ``{"embedding_input": [...], "modality": "image", "num_images": k,
"num_result_ids": k, "indice_name": NAME, ...}`` (the unit vector, since the back end searches its inner-product index
with the vector as sent); the answer is a JSON list of ``{"id", "similarity", "url", "caption", ...}`` in rank order.
``GET URL/indices-list`` names the back end's indexes: an unknown ``--knn-index`` is refused before any query (the
back end itself answers it with a bare HTTP 500). The back end is another machine's: its answers are checked (size,
types) before they are used, and nothing it names is ever opened or served by p2w (no local file, no features).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from p2w.core.dates import Where
from p2w.core.gallery import Hit, LocalFile, unfiltered
from p2w.errors import P2WError

MAX_ANSWER = 64 << 20  # bytes read from one answer (clip_back adds base64 images where it has local files)
TIMEOUT = 30.0  # seconds: a LAION-5B back end answers in well under a second; a cold one may take a few


class KnnService:
    """The index ``index`` (None: the back end's first) of the clip-retrieval back end at ``url``, e.g.
    ``KnnService("http://127.0.0.1:1234", "laion5B-L-14")``. The back end does not say the width of its vectors
    (``dim`` is 0): a query of another width than its index's fails there, and the error says so."""

    dim = 0

    def __init__(self, url: str, index: str | None, timeout: float = TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise P2WError(f"--knn-service takes an http(s) URL of a clip-retrieval back end, not {url!r}")
        self.url, self.timeout = url.rstrip("/"), timeout
        self.sent = 0  # the width of the last query sent
        names = self._call("GET", "/indices-list")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise P2WError(
                f"{self.url}/indices-list did not answer a list of index names; is it clip-retrieval's back end?"
            )
        if index is not None and index not in names:
            raise P2WError(f"the back end at {self.url} has no index {index!r}; it has: {', '.join(names)}")
        self.index = index if index is not None else names[0]

    @property
    def name(self) -> str:
        return f"the index {self.index!r} of {self.url}"

    def count(self) -> int | None:
        return None  # the back end does not say

    def search(self, query: np.ndarray, k: int, where: Where | None = None, ef: int | None = None) -> list[Hit]:
        """The back end's ``k`` nearest of ``query`` (sent L2-normalised), as it ranks them."""
        unfiltered(where, self.name)
        self.sent = int(query.shape[-1])
        wide = query.astype(np.float64)
        unit = wide / max(float(np.linalg.norm(wide)), 1e-12)
        body = {"embedding_input": unit.tolist(), "modality": "image", "num_images": k, "num_result_ids": k,
                "indice_name": self.index, "deduplicate": False, "use_safety_model": False,
                "use_violence_detector": False, "use_mclip": False}  # fmt: skip
        answer = self._call("POST", "/knn-service", body)
        if not isinstance(answer, list):
            raise P2WError(f"{self.url}/knn-service answered {type(answer).__name__}, not a list of results")
        return [_hit(rank, item, self.url) for rank, item in enumerate(answer[:k], 1)]

    def features(self, item: int) -> np.ndarray | None:
        return None  # the back end keeps its vectors

    def local_file(self, item: int) -> LocalFile | None:
        return None  # what a remote index names is never opened here

    def close(self) -> None:
        """Nothing is held open between queries."""

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise P2WError(_http_error(self.url + path, exc.code, self.sent)) from exc
        except TimeoutError as exc:
            raise P2WError(f"{self.url}{path} did not answer in {self.timeout:g} s") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise P2WError(f"{self.url}{path} did not answer in {self.timeout:g} s") from exc
            raise P2WError(f"cannot reach the knn-service at {self.url} ({reason})") from exc
        if len(raw) > MAX_ANSWER:
            raise P2WError(f"{self.url}{path} answered more than {MAX_ANSWER >> 20} MiB; not a knn-service answer")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise P2WError(f"{self.url}{path} did not answer JSON ({exc})") from exc


def _http_error(where: str, code: int, dim: int) -> str:
    if code == 500:  # clip_back answers every failure so: a vector of the wrong width among them
        return (f"{where} failed on the query (HTTP 500); its index must hold vectors of the model p2w encodes with "
                f"({dim}-d): pass that model's --model, e.g. ViT-L-14 for LAION-5B's")  # fmt: skip
    return f"{where} answered HTTP {code}"


def _hit(rank: int, item: Any, url: str) -> Hit:
    if not isinstance(item, dict) or not isinstance(item.get("similarity"), int | float):
        raise P2WError(f"{url}/knn-service answered a result without a similarity: {str(item)[:120]}")
    text = {k: item.get(k) if isinstance(item.get(k), str) else None for k in ("url", "caption", "image_path")}
    ident = item.get("id")
    return Hit(rank, float(item["similarity"]), text["image_path"] or text["url"] or "",
               id=ident if isinstance(ident, int) else -1, caption=text["caption"], url=text["url"])  # fmt: skip
