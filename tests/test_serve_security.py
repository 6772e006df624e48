"""Security probes of `p2w serve`, each through one real server process on 127.0.0.1 (tests/serving.py): every rule of
the Jupyter model (token, Host, origin, no CORS, files by catalog id only, upload limits) has a request here that a
naive server would answer with data, and p2w must refuse it, without ever returning a file it may not show, and keep
serving afterwards."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from p2w.cli import app
from serving import Running, backbone_args, make_photos, running_server

runner = CliRunner()
SECRET = b"TOP SECRET: not a photo, must never leave the server " * 40
MB = 1 << 20


@dataclass
class Served:
    """The module's one server, its catalog and what each probe may touch."""

    server: Running
    photos: Path  # the catalogued folder
    secret: Path  # a file outside the catalog
    ids: dict[str, int]  # catalogued path -> id

    @property
    def cookie(self) -> str:
        """The token cookie's name: one per port."""
        from p2w.serve.http import cookie_name

        return cookie_name(int(self.server.url.rsplit(":", 1)[1]))

    @property
    def hostport(self) -> str:
        return self.server.url.removeprefix("http://")

    def call(self, path: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        """One request (exactly these headers, plus the bearer token unless ``token=False``); never a CORS header."""
        status, got, data = self.server.request(path, body, headers, **kw)
        answer = Answer(status, {k.lower(): v for k, v in got.items()}, data)
        leaked = sorted(k for k in answer.headers if k.startswith("access-control-"))
        assert not leaked, f"{path}: CORS headers {leaked}"
        return answer

    def raw(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Answer:
        """A request with http.client: no redirect followed, no Host added unless given."""
        host, port = self.hostport.split(":")
        con = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                con.putheader(k, v)
            con.endheaders(body)
            response = con.getresponse()
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            con.close()
        assert not [k for k in answer.headers if k.startswith("access-control-")]
        return answer

    def alive(self) -> None:
        """The server still answers."""
        assert self.call("/api/status").status == 200


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        """The JSON answer's ``error`` message (it must have one)."""
        message = json.loads(self.body)["error"]
        assert isinstance(message, str) and message
        return message


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> Iterator[Served]:
    """One `p2w serve` over 30 indexed photos for the whole module, with its own P2W_HOME."""
    root = tmp_path_factory.mktemp("serve-security")
    home, photos = root / "p2w-home", root / "photos"
    make_photos(photos / "2024", 15)
    make_photos(photos / "2025", 15, seed=1)
    secret = root / "secret.txt"
    secret.write_bytes(SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("P2W_HOME", str(home))
        result = runner.invoke(app, ["index", str(photos), *backbone_args(tiny), "--workers", "0"])
    assert result.exit_code == 0, result.output
    with running_server(home, [*backbone_args(tiny), "--mapper", str(tiny.mapper)]) as server:
        status, answer = server.json("/api/search", {"text": "a photo", "k": 30})
        assert status == 200 and len(answer["results"]) == 30
        yield Served(server, photos, secret, {h["path"]: h["id"] for h in answer["results"]})
    for pipe in (server.proc.stdout, server.proc.stderr):  # running_server leaves them open
        if pipe is not None:
            pipe.close()


def _id(served: Served, name: str) -> int:
    return served.ids[str(served.photos / name)]


# ---- the token ---------------------------------------------------------------------------------------------------
PROTECTED = ["/", "/api/status", "/api/thumb/{id}", "/api/photo/{id}", "/assets/app.js", "/assets/style.css"]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_page_and_api_needs_the_token(served, path):
    # naive: serves the page, the catalog's status and the photos to anyone who can reach the port
    path = path.format(id=_id(served, "2024/photo 000.jpg"))
    assert served.call(path).status == 200  # the control: with the token it answers
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Cookie": f"{served.cookie}=x"},
    ):
        answer = served.call(path, headers=headers, token=False)
        assert answer.status == 403, (path, headers)
        assert "token" in answer.error()
        assert b"\xff\xd8" not in answer.body and b"photos" not in answer.body  # no JPEG, no status


def test_search_and_upload_need_the_token(served):
    body = json.dumps({"text": "a photo"}).encode()
    own = {"Content-Type": "application/json", "Origin": served.server.url}  # only the token is missing
    for path in ("/api/search", "/api/upload"):
        for headers in ({}, {"Authorization": "Bearer " + served.server.token[:-1]}, {"Cookie": f"{served.cookie}=x"}):
            answer = served.call(path, body, {**own, **headers}, token=False)
            assert answer.status == 403 and b"results" not in answer.body and "token" in answer.error()


def test_the_token_is_only_accepted_in_the_page_address_not_the_api(served):
    # ?token= is for the first visit of the page; API addresses with it would leak into logs and history
    token = served.server.token
    assert served.call(f"/api/status?token={token}", token=False).status == 403
    assert served.call(f"/api/photo/{_id(served, '2024/photo 001.jpg')}?token={token}", token=False).status == 403


def test_first_visit_sets_a_strict_httponly_cookie_and_drops_the_token_from_the_address(served):
    token = served.server.token
    answer = served.raw("GET", f"/?token={token}", {"Host": served.hostport})
    assert answer.status in (302, 303, 307)
    location = answer.headers["location"]
    assert location in ("/", served.server.url + "/") and token not in location
    cookie = answer.headers["set-cookie"]
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert cookie.startswith(f"{served.cookie}={token}") and "httponly" in parts and "samesite=strict" in parts
    # the cookie alone then opens the page, its assets and the API (GET)
    for path in ("/", "/assets/app.js", "/api/status"):
        assert served.call(path, headers={"Cookie": f"{served.cookie}={token}"}, token=False).status == 200
    # a wrong ?token= neither sets a cookie nor redirects
    wrong = served.raw("GET", "/?token=wrong", {"Host": served.hostport})
    assert wrong.status == 403 and "set-cookie" not in wrong.headers


# ---- Host (DNS rebinding) -----------------------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused_even_with_the_token(served):
    # naive: answers any Host, so evil.example resolved to 127.0.0.1 reads the API from the victim's browser
    port = served.hostport.split(":")[1]
    for host in (
        f"evil.example:{port}",
        f"127.0.0.1.evil.example:{port}",
        "127.0.0.1.evil.example",
        f"localhost.evil.example:{port}",
        f"evil.example:{port}@127.0.0.1:{port}",
        "127.0.0.1:1",
        "127.0.0.1",
        f"127.0.0.1:{port}.evil.example",
        "",
    ):
        for path in ("/", "/api/status", f"/api/photo/{_id(served, '2024/photo 002.jpg')}"):
            answer = served.call(path, headers={"Host": host})
            assert 400 <= answer.status < 500, (host, path, answer.status)
            assert b"\xff\xd8" not in answer.body and b"photos" not in answer.body
        answer = served.call("/api/search", b'{"text": "x"}', {"Host": host, "Content-Type": "application/json"})
        assert 400 <= answer.status < 500 and b"results" not in answer.body
    # no Host header at all: HTTP/1.1 (refused by the HTTP parser) and HTTP/1.0 (by p2w's check)
    assert 400 <= served.raw("GET", "/api/status", {"Authorization": f"Bearer {served.server.token}"}).status < 500
    host, _ = served.hostport.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET /api/status HTTP/1.0\r\nAuthorization: Bearer {served.server.token}\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.split(b" ", 2)[1] == b"421" and b"photos" not in reply, reply[:300]
    # the loopback names are fine
    for host in (served.hostport, f"localhost:{port}", f"LOCALHOST:{port}"):
        assert served.call("/api/status", headers={"Host": host}).status == 200


# ---- CORS and cross-origin writes ---------------------------------------------------------------------------------
def test_no_cors_headers_even_when_asked(served):
    # naive: CORSMiddleware(allow_origins=["*"]) lets any page read the answers
    evil = {"Origin": "http://evil.example"}
    for path in ("/", "/api/status", f"/api/thumb/{_id(served, '2024/photo 003.jpg')}"):
        served.call(path, headers=evil)  # call() asserts no Access-Control-* header
        served.call(path, headers=evil, token=False)
    preflight = {**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    for path in ("/api/search", "/api/upload", "/api/status"):
        assert served.call(path, headers=preflight, token=False, method="OPTIONS").status in (403, 405)
        assert served.call(path, headers=preflight, method="OPTIONS").status in (403, 405)


def test_cross_origin_posts_are_refused(served):
    # naive: a cookie-authenticated POST from any page runs (CSRF); the control shows the cookie POST itself works
    cookie = {"Cookie": f"{served.cookie}={served.server.token}", "Content-Type": "application/json"}
    body = json.dumps({"text": "a photo", "k": 3}).encode()
    own = served.server.url
    ok = served.call("/api/search", body, {**cookie, "Origin": own, "Sec-Fetch-Site": "same-origin"}, token=False)
    assert ok.status == 200 and len(json.loads(ok.body)["results"]) == 3
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"{own}.evil.example"},
        {"Origin": "http://localhost:1"},
        {"Origin": own, "Sec-Fetch-Site": "cross-site"},
        {"Origin": own, "Sec-Fetch-Site": "same-site"},  # another port of localhost is the same site
        {"Sec-Fetch-Site": "cross-site"},
        {},  # a cookie and no Origin: not a request the page makes
    ]
    for extra in refused:
        for path in ("/api/search", "/api/upload"):
            answer = served.call(path, body, {**cookie, **extra}, token=False)
            assert answer.status == 403 and b"results" not in answer.body, (path, extra)
            assert answer.error()
    # the bearer token does not excuse a foreign origin either
    assert served.call("/api/search", body, {"Origin": "http://evil.example"}).status == 403
    for method in ("PUT", "DELETE", "PATCH"):
        assert served.call("/api/search", body, cookie, token=False, method=method).status in (403, 405)


# ---- files: by catalog id only ----------------------------------------------------------------------------------
def test_path_tricks_never_reach_a_file(served):
    # naive: /api/photo/{path} or a static mount that resolves `..` serves any file the user can read
    source = (Path(__file__).parents[1] / "src/p2w/serve/service.py").read_bytes()
    probes = [
        "/api/photo/../../etc/passwd",
        "/api/photo/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/photo/..%2f..%2f..%2fetc%2fpasswd",
        f"/api/photo/{served.secret}",
        f"/api/photo/{str(served.secret).replace('/', '%2f')}",
        "/api/thumb/..%2f..%2fetc%2fpasswd",
        "/assets/../service.py",
        "/assets/..%2fservice.py",
        "/assets/%2e%2e%2f%2e%2e%2fserve%2fservice.py",
        "/assets/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/index.html/../../service.py",
        "/assets/app.js%00.py",
        "/api/photo/abc",
        "/api/photo/1.0",
        "/api/photo/-1",
        "/api/photo/+1",
        "/api/photo/0x1",
        "/api/photo/%201",
        "/api/photo/0",
        "/api/photo/999999",
        "/api/thumb/-1",
        "/api/thumb/999999",
        "/api/photo/" + "9" * 30,  # past SQLite's 64-bit integers
        "/api/thumb/" + "9" * 30,
    ]
    for path in probes:
        answer = served.call(path)
        assert 400 <= answer.status < 500, (path, answer.status, answer.body[:200])
        assert b"root:" not in answer.body and SECRET[:20] not in answer.body and source[:200] not in answer.body
        assert b"class Service" not in answer.body and b"\xff\xd8" not in answer.body
    served.alive()


def test_a_photo_replaced_by_a_symlink_out_of_the_catalog_is_not_served(served):
    # naive: opens the catalogued path (following the link): the secret, even with a size and mtime check
    photo = served.photos / "2024/photo 004.jpg"
    pid = _id(served, "2024/photo 004.jpg")
    original = photo.read_bytes()
    assert served.call(f"/api/photo/{pid}").body == original  # the control
    assert served.call(f"/api/thumb/{pid}").status == 200  # a thumbnail is now cached
    st = photo.stat()
    secret = served.secret.with_name("same-size-secret.bin")
    secret.write_bytes((SECRET * (len(original) // len(SECRET) + 1))[: len(original)])
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))  # what a stat() that follows links would see
    photo.unlink()
    photo.symlink_to(secret)
    for path in (f"/api/photo/{pid}", f"/api/thumb/{pid}"):
        answer = served.call(path)
        assert answer.status == 404 and SECRET[:20] not in answer.body and b"\xff\xd8" not in answer.body
        assert "index" in answer.error()
    answer = served.call("/api/search", json.dumps({"photo": pid, "k": 3}).encode(), {"Content-Type": "x"})
    assert answer.status == 404
    served.alive()


def test_a_deleted_photo_is_not_served(served):
    photo = served.photos / "2025/photo 005.jpg"
    pid = _id(served, "2025/photo 005.jpg")
    assert served.call(f"/api/thumb/{pid}").status == 200  # cached
    photo.unlink()
    for path in (f"/api/photo/{pid}", f"/api/thumb/{pid}"):
        answer = served.call(path)
        assert answer.status == 404 and b"\xff\xd8" not in answer.body and answer.error()
    served.alive()


def test_a_photo_changed_on_disk_is_not_served(served):
    # a new file at the catalogued path (other content, size): not the photo that was indexed
    photo = served.photos / "2025/photo 006.jpg"
    pid = _id(served, "2025/photo 006.jpg")
    photo.write_bytes(SECRET)
    answer = served.call(f"/api/photo/{pid}")
    assert answer.status == 404 and SECRET[:20] not in answer.body


# ---- uploads ----------------------------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _zeros(total: int, chunk: int = MB) -> Iterator[bytes]:
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block


def test_a_100_mb_upload_is_refused_early_without_exhausting_memory(served, capsys):
    # naive: `await request.body()` reads all 100 MB (or 100 GB) into memory before looking at it
    pid = served.server.proc.pid
    before = _rss_kib(pid)
    results = []
    for label, headers in (("chunked", {}), ("content-length", {"Content-Length": str(100 * MB)})):
        start = time.monotonic()
        answer = served.call("/api/upload", _zeros(100 * MB), {"Content-Type": "image/png", **headers})
        elapsed = time.monotonic() - start
        assert answer.status == 413 and "limit" in answer.error(), (label, answer.status, answer.body[:200])
        assert elapsed < 15, (label, elapsed)
        results.append(f"{label}: {elapsed:.2f}s, RSS {_rss_kib(pid) // 1024} MiB")
        served.alive()
    growth = _rss_kib(pid) - before
    with capsys.disabled():
        print(f"\n100 MB uploads: RSS before {before // 1024} MiB; " + "; ".join(results))
    assert growth < 60 * 1024, f"RSS grew by {growth // 1024} MiB"


def _png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of one colour, compressed row by row (never the pixels in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    rows_at_once = max(1, (4 * MB) // len(row))
    idat = []
    for start in range(0, height, rows_at_once):
        idat.append(packer.compress(row * min(rows_at_once, height - start)))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused(served):
    # naive: PIL decodes 30000x30000 (900 MB as greyscale, 2.7 GB as RGB) from a 100 KB file
    pid = served.server.proc.pid
    before = _rss_kib(pid)
    for width, height in ((30000, 30000), (8000, 8000)):  # over Pillow's own limit; over p2w's 50 MP only
        bomb = _png(width, height)
        assert len(bomb) < 1 * MB
        answer = served.call("/api/upload", bomb, {"Content-Type": "image/png"})
        assert answer.status == 413, (width, answer.status, answer.body[:300])
        message = answer.error()
        assert "pixels" in message and ("limit" in message or "too large" in message), message
        served.alive()
    assert _rss_kib(pid) - before < 60 * 1024


def test_uploads_that_are_not_images_are_refused(served):
    # naive: passes the bytes to PIL and answers 500 with a traceback
    for body in (
        b"just some text, not an image\n" * 10,
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        b"\x89PNG\r\n\x1a\n" + b"\xff" * 200,
    ):
        answer = served.call("/api/upload", body, {"Content-Type": "image/png"})
        assert answer.status == 415, (body[:20], answer.status, answer.body)
        assert "image" in answer.error() or "decoded" in answer.error()
        assert b"Traceback" not in answer.body
    empty = served.call("/api/upload", b"", {"Content-Type": "image/png"})
    assert 400 <= empty.status < 500 and "empty" in empty.error()
    served.alive()


# ---- the search API -----------------------------------------------------------------------------------------------
BAD_SEARCHES: list[bytes] = [
    b"{",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b'"a string"',
    b"null",
    b"[" * 50_000,  # nesting deep enough to exhaust the JSON decoder's recursion
    b'{"text": 5}',
    b'{"text": ["a"]}',
    b'{"k": "5"}',
    b'{"k": 2.5}',
    b'{"k": true}',
    b'{"k": NaN}',
    b'{"k": 0}',
    b'{"k": -1}',
    b'{"k": 1000000000}',
    b'{"k": 1e400}',
    b'{"ef": 100000000}',
    b'{"photo": "1"}',
    b'{"photo": 1, "upload": "abc"}',
    b'{"text": "x", "__class__": "y"}',
    b'{"text": "x", "path": "/etc/passwd"}',
    b'{"text": "x", "within": "photos/2024"}',
    b'{"text": "x", "within": "../.."}',
    b'{"text": "x", "within": "~/photos"}',
    b'{"text": "x", "mode": "no such mode"}',
    b'{"text": "x", "after": "2023-13"}',
    b'{"text": "x", "before": "yesterday"}',
    b'{"text": "x", "after": 2023}',
    b'{"text": "x", "after": "2024", "before": "2023"}',
    b'{"text": "x", "min_score": "0.5"}',
    b'{"text": "x", "min_score": 5}',
    b'{"text": "x", "drop": -1}',
    b'{"text": "x", "drop": 1e400}',
    b'{"text": "x", "mode": "slerp", "alpha": "0.5"}',
    b'{"text": "x", "mode": "slerp", "alpha": 1.5}',
    b'{"text": "x", "mode": "weighted", "alpha": -0.1}',
    b'{"text": "x", "mode": "slerp", "alpha": true}',
    b'{"text": "x", "mode": "slerp", "alpha": NaN}',
    b'{"text": "x", "mode": "text", "alpha": 0.5}',
    b'{"text": "x", "mode": "slerp"}',
]


@pytest.mark.parametrize("body", BAD_SEARCHES, ids=[b[:30].decode("latin-1") for b in BAD_SEARCHES])
def test_bad_searches_get_a_400_with_a_message(served, body):
    answer = served.call("/api/search", body, {"Content-Type": "application/json"})
    assert answer.status == 400, (body[:40], answer.status, answer.body[:300])
    assert answer.error() and b"Traceback" not in answer.body


BAD_DUPLICATES = [
    b"{",
    b"[]",
    b'{"threshold": "0.9"}',
    b'{"threshold": 2}',
    b'{"threshold": true}',
    b'{"within": "photos"}',
    b'{"within": 5}',
    b'{"path": "/etc"}',
    b'{"threshold": NaN}',
]


@pytest.mark.parametrize("body", BAD_DUPLICATES, ids=[b.decode() for b in BAD_DUPLICATES])
def test_bad_duplicates_requests_get_a_400_and_good_ones_need_the_token(served, body):
    answer = served.call("/api/duplicates", body, {"Content-Type": "application/json"})
    assert answer.status == 400 and answer.error() and b"Traceback" not in answer.body, answer.body[:300]
    good = json.dumps({"within": str(served.photos / "2024")}).encode()
    assert served.call("/api/duplicates", good, {"Content-Type": "application/json"}).status == 200
    own = {"Content-Type": "application/json", "Origin": served.server.url}
    assert served.call("/api/duplicates", good, own, token=False).status == 403


def test_searches_for_what_is_not_there_get_a_404(served):
    for query in ({"photo": 999999}, {"photo": -5}, {"photo": 10**30}, {"upload": "0" * 32}, {"upload": "../x"}):
        answer = served.call("/api/search", json.dumps(query).encode(), {"Content-Type": "application/json"})
        assert answer.status == 404, (query, answer.status, answer.body[:300])
        assert answer.error()


def test_an_oversized_search_body_is_refused(served):
    body = json.dumps({"text": "x" * (200 << 10)}).encode()
    answer = served.call("/api/search", body, {"Content-Type": "application/json"})
    assert answer.status == 413 and answer.error()


# ---- binding ------------------------------------------------------------------------------------------------------
def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                out.append(address)
    return out


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_the_default_bind_is_loopback_only(served):
    assert served.server.url.startswith("http://127.0.0.1:")
    addresses = _listening(int(served.hostport.split(":")[1]))
    assert addresses == ["0100007F"], addresses  # 127.0.0.1, and not 0.0.0.0 (00000000) nor :: (tcp6)


def test_another_host_needs_host_and_gets_a_warning(tiny, monkeypatch):
    # not bound for real here (that would expose a test server to the network): the CLI up to serve()
    import p2w.serve.run
    from p2w.cli.serve import _loopback

    calls: list[str] = []
    monkeypatch.setattr(p2w.serve.run, "serve", lambda load, settings, host, port, on_ready, **kw: calls.append(host))
    for host, warned in (("0.0.0.0", True), ("::", True), ("192.168.1.20", True), (None, False), ("::1", False)):
        args = ["serve", *backbone_args(tiny), "--device", "cpu", *(["--host", host] if host else [])]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert calls.pop() == (host or "127.0.0.1")
        warning = f"warning: listening on {host}: anyone who can reach this machine"
        assert (warning in result.stderr) is warned, result.stderr
        assert "warning" not in result.stdout
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert _loopback(host)
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.evil.example", ""):
        assert not _loopback(host)


# ---- and after all of that ------------------------------------------------------------------------------------------
def test_normal_searches_still_work_after_every_bad_request(served):
    assert served.server.proc.poll() is None
    status, answer = served.server.json("/api/search", {"text": "a red photo", "k": 5})
    assert status == 200 and len(answer["results"]) == 5
    pid = _id(served, "2024/photo 010.jpg")
    upload = served.call("/api/upload", (served.photos / "2024/photo 010.jpg").read_bytes(), {"Content-Type": "x"})
    assert upload.status == 200
    status, answer = served.server.json("/api/search", {"upload": json.loads(upload.body)["upload"], "k": 3})
    assert status == 200 and answer["results"][0]["id"] == pid
    status, answer = served.server.json("/api/search", {"photo": pid, "text": "in blue", "k": 3})
    assert status == 200 and len(answer["results"]) == 3
    within = str(served.photos / "2025")
    status, answer = served.server.json("/api/search", {"text": "a photo", "k": 30, "within": within})
    assert status == 200 and answer["results"] and all(h["path"].startswith(within) for h in answer["results"])


def test_the_address_token_wins_over_a_stale_cookie(served):
    """After a restart (a new token) the browser still holds the old cookie: the printed address must still work,
    and a cookie of another port's server never counts."""
    stale = {"Cookie": f"{served.cookie}=an-old-servers-token"}
    first = served.raw("GET", f"/?token={served.server.token}", {"Host": served.hostport, **stale})  # not followed
    assert first.status == 303 and served.server.token in first.headers.get("set-cookie", "")
    other_port = {"Cookie": f"p2w_token_1={served.server.token}"}
    assert served.call("/api/status", headers=other_port, token=False).status == 403
