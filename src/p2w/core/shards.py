"""Webdataset shards: brace patterns (``shards/{00000..00099}.tar``), URLs read through fsspec, and tar files
streamed into samples grouped by key as webdataset groups them (never extracted, never whole in memory)."""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any
from urllib.parse import urlsplit

from p2w.core.samples import Problems, Sample
from p2w.errors import P2WError, summary
from p2w.fspath import shown

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # a shard's image member: the first present
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")
_MEMBER = re.compile(r"((?:.*/|)[^.]+)[.]([^/]*)")  # webdataset's split: key up to the base name's first dot
_READ_EXTS = frozenset((*IMAGE_EXTS, "txt", "json"))  # the members read; the others are skipped unread


def expand_braces(pattern: str) -> list[str]:
    """The names a brace pattern stands for, in order, e.g. ``"s/{08..10}.tar"`` -> ``["s/08.tar", "s/09.tar",
    "s/10.tar"]`` (the width of the first number), ``"{a,b}/{0..1}"`` -> ``["a/0", "a/1", "b/0", "b/1"]``; text
    without braces, or braces with neither ``..`` nor ``,`` (``{x}``), stays as written."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head = pattern[: match.start()]
    rests = expand_braces(pattern[match.end() :])
    choices = _choices(match.group(1))
    if choices is None:
        return [head + match.group(0) + rest for rest in rests]
    return [head + choice + rest for choice in choices for rest in rests]


def _choices(body: str) -> list[str] | None:
    numbers = _RANGE.fullmatch(body)
    if numbers:
        first, last = numbers.group(1), numbers.group(2)
        step = 1 if int(last) >= int(first) else -1
        return [str(n).zfill(len(first)) for n in range(int(first), int(last) + step, step)]
    return body.split(",") if "," in body else None


def check_backend(url: str) -> None:
    """Fail now, not in a worker, when fsspec or the backend for the URL's scheme is missing."""
    try:
        import fsspec
    except ImportError as exc:
        raise P2WError(f"reading {shown(url)} needs fsspec: pip install fsspec") from exc
    scheme = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:  # fsspec's message names what is missing, e.g. "Install s3fs to access S3"
        from fsspec.registry import known_implementations

        backend = str(known_implementations.get(scheme, {}).get("class", "")).split(".")[0]
        hint = f" (pip install {backend})" if backend and backend != "fsspec" else ""
        raise P2WError(f"cannot read {scheme}:// URLs: {summary(exc)}{hint}") from exc
    except ValueError as exc:
        raise P2WError(f"cannot read {shown(url)}: {summary(exc)}; use a local path or a scheme fsspec knows") from exc


def url_shard(url: str) -> str:
    if not urlsplit(url).path.lower().endswith(TAR_SUFFIXES):
        raise P2WError(f"{shown(url)}: only webdataset shards (.tar, .tar.gz, .tgz) are read from URLs; copy it here")
    return url


def read_shard(source: str, problems: Problems) -> Iterator[Sample]:
    """A shard's samples: consecutive members grouped by key, as webdataset groups them; a sample is complete when
    the next key's first header is read. A shard that cannot be read to its end is an "unreadable shard"."""
    key: str | None = None
    group: dict[str, bytes | None] = {}
    try:
        with _open_shard(source) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for name, ext, info in _files(tar):
                if name != key:
                    if key is not None and (sample := _sample(f"{source}:{key}", key, group, problems)):
                        yield sample
                    key, group = name, {}
                if ext not in group:  # the bytes of extensions not used are skipped unread
                    group[ext] = _member_bytes(tar, info) if ext in _READ_EXTS else None
            _check_end(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        problems.add("unreadable shard", f"{source} ({summary(exc)})")
        return  # the sample being read may be incomplete
    if key is not None and (sample := _sample(f"{source}:{key}", key, group, problems)):
        yield sample


def _files(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """``(key, extension, member)`` per file member whose name has a key and an extension, streamed."""
    while (info := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header read; a shard has many
        split = _MEMBER.fullmatch(info.name) if info.isfile() else None
        if split is not None:
            yield split.group(1), split.group(2).lower(), info


def _open_shard(source: str) -> AbstractContextManager[IO[bytes]]:
    if URL.match(source):
        import fsspec

        opened: AbstractContextManager[IO[bytes]] = fsspec.open(source, "rb")
        return opened
    return open(source, "rb")


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    return f.read() if f is not None else b""


def _check_end(tar: tarfile.TarFile) -> None:
    """tarfile takes a shard cut at a member's boundary for one that ends there; a whole shard has a zero block next."""
    stream = tar.fileobj
    if stream is not None and stream.tell() < tar.offset + tarfile.BLOCKSIZE:
        raise tarfile.ReadError("it ends without the end-of-archive block (cut short?)")


def _sample(where: str, key: str, group: dict[str, bytes | None], problems: Problems) -> Sample | None:
    image = next((group[ext] for ext in IMAGE_EXTS if group.get(ext) is not None), None)
    if image is None:
        problems.add("no image", where)
        return None
    text, raw = group.get("txt"), group.get("json")
    caption = None if text is None else _decoded(text, where, problems)
    meta = {} if raw is None else _parsed(raw, where, problems)
    return Sample(key, None, image, caption, meta)


def _decoded(text: bytes, where: str, problems: Problems) -> str | None:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        problems.add("caption not UTF-8", where)
        return None


def _parsed(raw: bytes, where: str, problems: Problems) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:  # JSONDecodeError, and bytes that are not text
        meta = None
    if isinstance(meta, dict):
        return meta
    problems.add("bad json", where)
    return {}
