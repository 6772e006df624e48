"""``p2w mapper download``: fetch a published mapper and register it.

A download never runs code from a file: checkpoints are opened with ``weights_only=True``, the mapper is taken out
and saved as p2w safetensors; nothing is registered unless every check passed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from p2w.core.download import cached_hub_file, hub_file, url_file
from p2w.core.resolve import mapper_dims
from p2w.digest import sha256_file
from p2w.errors import MapperError
from p2w.mappers.files import import_mapper
from p2w.mappers.registry import KNOWN, free_name
from p2w.progress import Progress
from p2w.settings import Settings

log = logging.getLogger(__name__)


_REMEDY = "fetch it elsewhere and run: p2w mapper import FILE --name NAME"


@dataclass
class Downloaded:
    """A registered download."""

    name: str
    path: Path
    backbone: str
    sha256: str
    source: str
    source_kept: Path | None


def download(
    source: str,
    settings: Settings | None = None,
    name: str | None = None,
    sha256: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    keep_source: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    method_name: str | None = None,
) -> Downloaded:
    """Fetch a mapper (registry name, ``hf://owner/repo/file``, ``http(s)://`` URL or local file) and register it."""
    settings = settings or Settings.from_env()
    known = KNOWN.get(source)
    url = known.source if known else source
    expected = (sha256 or (known.sha256 if known else None) or "").lower() or None
    spec = settings.backbone(
        model or (known.model if known else None), pretrained or (known.pretrained if known else None)
    )
    name = name or (known.name if known else Path(urlparse(url).path).stem)
    free_name(settings.mappers_dir, name, overwrite)  # before the download
    path, ours = _fetch(url, settings, progress)
    try:
        digest = sha256_file(path)
        if expected and digest != expected:
            raise MapperError(f"sha256 of {url} is {digest}, not the expected {expected}; nothing was registered")
        stored = import_mapper(
            path,
            name,
            settings.mappers_dir,
            spec.id,
            mapper_dims(spec),
            overwrite=overwrite,
            extra={"source": url, "source_sha256": digest},
            method_name=method_name or (known.method if known else None),
        )
    except BaseException:
        _drop(path, ours)  # a bad or partial download of p2w's is never left behind
        raise
    kept = path if keep_source or not ours else None
    if not keep_source:
        _drop(path, ours)
    return Downloaded(name, stored, spec.id, digest, url, kept)


def _fetch(url: str, settings: Settings, progress: Progress | None) -> tuple[Path, bool]:
    """A local path for ``url`` and whether this run made it (downloaded it, so may delete it): a file that was in
    the Hugging Face cache before, or a local file, belongs to someone else."""
    parsed = urlparse(url)
    if parsed.scheme == "hf":
        owner, repo, *rest = (parsed.netloc + parsed.path).split("/")
        if not rest:
            raise MapperError(f"hf:// sources are hf://owner/repo/path/to/file, not {url}")
        filename = "/".join(rest)
        there = cached_hub_file(f"{owner}/{repo}", [filename]) is not None  # another tool's (or an earlier run's)
        path = hub_file(f"{owner}/{repo}", [filename], f"{filename} of {owner}/{repo}", _REMEDY, MapperError)
        return path, not there
    if parsed.scheme in ("http", "https"):
        return url_file(url, settings.home / "downloads", "the mapper", _REMEDY, MapperError, progress), True
    path = Path(url).expanduser()
    if not path.is_file():
        hint = f"; known names: {', '.join(KNOWN)}" if "/" not in url else ""
        raise MapperError(f"not a file, URL or known mapper: {url}{hint}")
    return path, False


def _drop(path: Path, ours: bool) -> None:
    """Remove a source this run downloaded (in the Hugging Face cache: its link and its blob); anything else is
    someone else's and stays."""
    if not ours:
        return
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
