"""The HTTP face of ``p2w serve``: a Starlette app over ``Service``. The server can read the user's photos, so every
request is treated as possibly hostile (the Jupyter model):

- a token is required for the page, its assets and the API: ``?token=`` once (it becomes an HttpOnly, SameSite=
  Strict cookie, and the browser is sent to the bare URL), or ``Authorization: Bearer TOKEN`` (``p2w search``);
- the Host header must name the bound address (no DNS rebinding); no CORS headers are ever sent;
- a state-changing request (POST) from a browser must come from the page's own origin;
- uploads are read with a byte limit before anything is decoded (the rest of an oversized body is read and dropped,
  within a bound, so that even a ``Connection: close`` client reads the 413); files are served by catalog id only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, BinaryIO, TypeVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from p2w.errors import P2WError
from p2w.fspath import shown
from p2w.serve.errors import NotFound, ServeError, TooLarge
from p2w.serve.requests import DuplicatesQuery, Query
from p2w.serve.service import Service, engine_thread

log = logging.getLogger(__name__)
COOKIE = "p2w_token"
ASSETS = ("app.js", "style.css")
DRAIN = 256 << 20  # the most of an oversized body read (and dropped) before the 413; beyond it the connection drops
T = TypeVar("T")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def cookie_name(port: int) -> str:
    """The token cookie of the server on ``port`` (cookies ignore ports: two servers, or a restarted one, on one
    host must not read each other's), e.g. ``p2w_token_8765``."""
    return f"{COOKIE}_{port}"


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host headers this server answers to: its loopback names, or the bound address and this machine's names."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if _is_wildcard(host):
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(f"[{host}]" if ":" in host else host)
    return {f"{n}:{port}".lower() for n in names}


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class Guard:
    """ASGI middleware: Host check, token check, same-origin POSTs, security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str, hosts: set[str], wildcard: bool, port: int) -> None:
        self.app, self.token, self.hosts, self.wildcard = app, token, hosts, wildcard
        self.cookie = cookie_name(port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await _error(refusal[0], refusal[1])(scope, receive, send)
            return
        if request.method == "GET" and request.url.path == "/" and "token" in request.query_params:
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar and history
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            await _secured(response)(scope, receive, send)
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_header_list()]
            await send(message)

        await self.app(scope, receive, send_secured)

    def _refusal(self, request: Request) -> tuple[int, str] | None:
        host = (request.headers.get("host") or "").lower()
        if host not in self.hosts and not (self.wildcard and _is_ip_host(host)):
            return 421, "unexpected Host header: open the address p2w serve printed"
        bearer = request.headers.get("authorization", "")
        given = bearer.removeprefix("Bearer ").strip() if bearer.startswith("Bearer ") else None
        via_cookie = given is None
        if given is None:  # the address's token first: a cookie left by an earlier server must not shadow it
            first_visit = request.query_params.get("token") if request.url.path == "/" else None
            given = first_visit or request.cookies.get(self.cookie)
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return 403, "a valid token is required: open the address (with ?token=...) that p2w serve printed"
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return 403, "cross-site requests are refused"
            if origin is not None and f"{origin.split('://', 1)[-1].lower()}" != host:
                return 403, "requests from another origin are refused"
            if via_cookie and origin is None:
                return 403, "a browser request without an Origin is refused"
        return None


def _is_ip_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _header_list() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]


def _secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def _error(status: int, message: str) -> Response:
    return _secured(JSONResponse({"error": message}, status_code=status))


def create_app(
    service: Service, token: str, host: str, port: int, worker: ThreadPoolExecutor | None = None
) -> Starlette:
    """The ASGI app of ``service``, e.g. ``service, worker = p2w.serve.service.start(load, settings)``, then
    ``uvicorn.run(create_app(service, token, "127.0.0.1", 8765, worker))``: ``worker`` is the service's own thread,
    where every call runs, shut down when the app stops. Without one, a new thread runs the calls (slower: see
    ``start``)."""
    api = _Api(service, worker or engine_thread())
    routes = [
        Route("/", _endpoint(api.page)),
        Route("/assets/{name}", _endpoint(api.asset)),
        Route("/api/status", _endpoint(api.status)),
        Route("/api/upload", _endpoint(api.upload), methods=["POST"]),
        Route("/api/search", _endpoint(api.search), methods=["POST"]),
        Route("/api/duplicates", _endpoint(api.duplicates), methods=["POST"]),
        Route("/api/thumb/{photo:int}", _endpoint(api.thumb)),
        Route("/api/photo/{photo:int}", _endpoint(api.photo)),
    ]
    app = Starlette(routes=routes, lifespan=api.lifespan)
    app.add_middleware(Guard, token=token, hosts=allowed_hosts(host, port), wildcard=_is_wildcard(host), port=port)
    return app


def _endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every refusal as a JSON ``{"error": ...}`` of its status, never a traceback to the client; and a
    ``Server-Timing`` header, as browsers' developer tools and benchmarks/serve_latency.py read it: ``app``, the time
    the request took in the app (its body read, the engine's work) before the response is sent, then the stages of an
    upload (``decode``, ``preprocess``, ``tower``) or a search (``reference``, ``compose``, ``ann``), in ms."""

    async def wrapped(request: Request) -> Response:
        start = time.perf_counter()
        response = await _answer(fn, request)
        stages = getattr(request.state, "timings", {})
        timing = [("app", 1000 * (time.perf_counter() - start)), *stages.items()]
        response.headers["Server-Timing"] = ", ".join(f"{name};dur={ms:.2f}" for name, ms in timing)
        return response

    return wrapped


async def _answer(fn: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    try:
        return await fn(request)
    except ServeError as exc:
        return _error(exc.status, str(exc))
    except P2WError as exc:  # a query the library refuses (prompt, mode, mapper): the user's to fix
        return _error(400, str(exc))
    except Exception:  # the server keeps serving
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error(500, "internal error; see the server's log")


class _Api:
    """The endpoints over one ``Service``, whose every call runs on its one thread (the engine's and SQLite's)."""

    def __init__(self, service: Service, worker: ThreadPoolExecutor) -> None:
        self.service = service
        self.worker = worker

    async def on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def on_worker_timed(self, request: Request, fn: Callable[..., T], *args: Any) -> T:
        """``on_worker``, keeping the call's stage timings for the response's Server-Timing header."""

        def call() -> tuple[T, dict[str, float]]:
            return fn(*args), dict(self.service.timings)

        out, request.state.timings = await self.on_worker(call)
        return out

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.on_worker(self.service.prepare)  # the index is loaded before the first request is accepted
        yield
        await self.on_worker(self.service.close)  # the catalog's connection belongs to the worker thread
        self.worker.shutdown(wait=True)

    async def page(self, request: Request) -> Response:
        return _asset("index.html", "text/html; charset=utf-8")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _error(404, "no such file")
        return _asset(name, "text/javascript" if name.endswith(".js") else "text/css")

    async def status(self, request: Request) -> Response:
        return JSONResponse(await self.on_worker(self.service.status))

    async def upload(self, request: Request) -> Response:
        body = await _read_limited(request, self.service.limits.upload_bytes)
        return JSONResponse(await self.on_worker_timed(request, self.service.upload, body))

    async def search(self, request: Request) -> Response:
        raw = await _read_limited(request, 64 << 10)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the decoder
            raise ServeError("the search request must be JSON") from exc
        query = Query.from_json(data, self.service.limits)
        for photo in [query.photo, *(ref.photo for ref in query.images)]:
            if photo is not None:
                _photo_id(photo)
        return JSONResponse(await self.on_worker_timed(request, self.service.search, query))

    async def duplicates(self, request: Request) -> Response:
        raw = await _read_limited(request, 4 << 10)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ServeError("the duplicates request must be JSON") from exc
        ask = DuplicatesQuery.from_json(data)
        return JSONResponse(await self.on_worker_timed(request, self.service.duplicates, ask))

    async def thumb(self, request: Request) -> Response:
        path = await self.on_worker(self.service.thumbnail, _photo_id(request.path_params["photo"]))
        return FileResponse(path, media_type="image/jpeg")

    async def photo(self, request: Request) -> Response:
        original = await self.on_worker(self.service.original, _photo_id(request.path_params["photo"]))
        headers = {"Content-Length": str(original.size), "Content-Disposition": _inline(original.name)}
        media_type = mimetypes.guess_type(original.name)[0] or "application/octet-stream"
        return StreamingResponse(_read(original.file, original.size), media_type=media_type, headers=headers)


def _read(file: BinaryIO, size: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """``size`` bytes of an open file in chunks (no more: the Content-Length sent), then the file closed."""
    with file:
        left = size
        while left > 0:
            data = file.read(min(chunk, left))
            if not data:
                break
            left -= len(data)
            yield data


def _inline(name: str) -> str:
    """``Content-Disposition: inline`` with the file's name (RFC 6266: quoted when ASCII, else ``filename*``; a name
    that is not UTF-8 as ``p2w.fspath.shown`` writes it)."""
    name = shown(name)
    quoted = urllib.parse.quote(name)
    return f"inline; filename*=utf-8''{quoted}" if quoted != name else f'inline; filename="{name}"'


def _photo_id(photo: int) -> int:
    """A catalog id as asked for; one past SQLite's 64-bit integers is simply not in the catalog."""
    if not 0 <= photo < 1 << 63:
        raise NotFound(f"no photo {photo} in the catalog")
    return photo


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if "100-continue" not in request.headers.get("expect", "").lower():  # else the body is never sent
            await _drain(request)
        raise TooLarge(f"the request is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request)
            raise TooLarge(f"the request is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request) -> None:
    """Read and drop the rest of an oversized body (up to ``DRAIN`` bytes): answering while the client still sends
    makes the closing server reset the connection, and the client would see that instead of the 413."""
    size = 0
    with contextlib.suppress(ClientDisconnect):  # the client went away: nothing to answer
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN:
                break


def _asset(name: str, media_type: str) -> Response:
    data = resources.files("p2w.serve").joinpath("assets").joinpath(name).read_bytes()
    return Response(data, media_type=media_type)
