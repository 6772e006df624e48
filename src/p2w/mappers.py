"""The mapper registry of ``P2W_HOME/mappers``: known published mappers, download, list, remove, defaults.

A download never runs code from a file: checkpoints are opened with ``weights_only=True``, the mapper is taken out
and saved as p2w safetensors; nothing is registered unless every check passed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from p2w.atomic import atomic_path
from p2w.digest import sha256_file
from p2w.errors import MapperError
from p2w.mapper import FORMAT, import_mapper
from p2w.settings import Settings
from p2w.weights import BUILTIN_MODELS, BUILTIN_TAG, BackboneSpec, builtin_file, mapper_dims, offline_reason

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0)


@dataclass(frozen=True)
class KnownMapper:
    """A published mapper: where it comes from, for which backbone, and what is known of its provenance."""

    name: str
    model: str
    pretrained: str
    source: str  # hf://owner/repo/file or https://...
    sha256: str | None
    licence: str
    notes: str

    @property
    def backbone(self) -> str:
        """Backbone id the mapper belongs to."""
        return f"{self.model}/{self.pretrained}"


KNOWN = {
    m.name: m
    for m in [
        KnownMapper(
            name="pic2word-vit-l-14",
            model="ViT-L-14",
            pretrained="openai",
            source="hf://flashingtt/pic2word/pic2word_model.pt",
            sha256=None,  # not published by the authors; p2w prints the digest of what it downloads
            licence="Apache-2.0 (google-research/composed_image_retrieval)",
            notes="the Pic2Word authors' checkpoint (CC3M, OpenAI CLIP ViT-L/14) as re-shared on the Hugging Face "
            "Hub, the authors' Google Drive link being dead (reference repo issue #30); ~1.7 GB, holds the whole "
            "CLIP and state_dict_img2text",
        )
    ]
}


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
    target = settings.mappers_dir / f"{name}.safetensors"
    if target.exists() and not overwrite:
        raise MapperError(f"a mapper named {name!r} exists already ({target}); pick another --name or pass --force")
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
        )
    except BaseException:
        if ours:
            path.unlink(missing_ok=True)  # a bad or partial download is never left behind
        raise
    kept = path if keep_source else None
    if not keep_source:
        _drop(path, ours)
    return Downloaded(name, stored, spec.id, digest, url, kept)


def _fetch(url: str, settings: Settings, progress: Progress | None) -> tuple[Path, bool]:
    """A local path for ``url`` and whether p2w downloaded it into its own folder (so may delete it)."""
    parsed = urlparse(url)
    if parsed.scheme == "hf":
        return _fetch_hf(parsed.netloc + parsed.path), False
    if parsed.scheme in ("http", "https"):
        return _fetch_url(url, settings.home / "downloads", progress), True
    path = Path(url).expanduser()
    if not path.is_file():
        hint = f"; known names: {', '.join(KNOWN)}" if "/" not in url else ""
        raise MapperError(f"not a file, URL or known mapper: {url}{hint}")
    return path, False


def _fetch_hf(spec: str) -> Path:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    owner, repo, *rest = spec.split("/")
    if not rest:
        raise MapperError(f"hf:// sources are hf://owner/repo/path/to/file, not hf://{spec}")
    repo_id, filename = f"{owner}/{repo}", "/".join(rest)
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    reason = offline_reason(constants.ENDPOINT)
    if reason:
        raise MapperError(
            f"cannot download {filename} of {repo_id}: it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and {reason}; fetch it elsewhere and run: p2w mapper import FILE --name NAME"
        )
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # hub errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapperError(f"downloading {filename} of {repo_id} failed: {first}") from None


def _fetch_url(url: str, folder: Path, progress: Progress | None) -> Path:
    """Download to ``folder`` via a ``.part`` file, resuming one left by an interrupted run."""
    reason = offline_reason(url, hub=False)
    if reason:
        raise MapperError(
            f"cannot download {url}: {reason}; fetch it elsewhere and run: p2w mapper import FILE --name NAME"
        )
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "mapper.bin"
    part = folder / f"{name}.part"
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if done and response.status != 206:  # the server ignored the range: start over
                done = 0
            total = done + int(response.headers.get("Content-Length") or 0)
            with part.open("ab" if done else "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise MapperError(f"downloading {url} failed ({exc}); run the command again to resume") from None
    final = folder / name
    os.replace(part, final)
    return final


def _drop(path: Path, ours: bool) -> None:
    """Remove the downloaded source: p2w's own download, or the file's blob in the Hugging Face cache."""
    if ours:
        path.unlink(missing_ok=True)
        return
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE).resolve()
    if cache in path.resolve().parents:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)


# ---- the registry folder -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    """A mapper in ``P2W_HOME/mappers``."""

    name: str
    path: Path
    backbone: str
    embed_dim: int
    token_width: int
    size: int
    source: str
    is_default: bool

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "backbone": self.backbone,
            "embed_dim": self.embed_dim,
            "token_width": self.token_width,
            "bytes": self.size,
            "source": self.source,
            "default": self.is_default,
            "path": str(self.path),
        }


def registered(settings: Settings | None = None) -> list[Registered]:
    """Every mapper in the registry, read from the files' metadata (no tensor is loaded)."""
    from safetensors import safe_open

    settings = settings or Settings.from_env()
    defaults = _defaults(settings)
    out = []
    for path in sorted(settings.mappers_dir.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except Exception:  # a foreign or damaged file is shown, not fatal
            meta = {}
        backbone = meta.get("backbone", "?")
        out.append(
            Registered(
                path.stem,
                path,
                backbone,
                int(meta.get("embed_dim", 0)),
                int(meta.get("token_width", 0)),
                path.stat().st_size,
                meta.get("source", "" if meta.get("format") == FORMAT else "unknown"),
                defaults.get(backbone) == path.stem,
            )
        )
    names = {r.name for r in out}
    for model, path in builtin_mappers().items():  # shipped with p2w, listed after the registry
        if model in names:
            continue  # a registered mapper of the same name wins
        spec = BackboneSpec(model, BUILTIN_TAG)
        dims = mapper_dims(spec) or (0, 0)
        is_default = spec.id not in defaults
        out.append(Registered(model, path, spec.id, *dims, path.stat().st_size, "shipped with p2w", is_default))
    return out


def builtin_mappers() -> dict[str, Path]:
    """The mappers shipped with p2w's builtin backbones, by backbone (and mapper) name."""
    paths = {model: builtin_file(model, "mapper.safetensors") for model in BUILTIN_MODELS}
    return {model: path for model, path in paths.items() if path.is_file()}


def remove(name: str, settings: Settings | None = None) -> Path:
    """Delete a registered mapper (and its default mark)."""
    settings = settings or Settings.from_env()
    path = _registered_path(name, settings)
    defaults = {k: v for k, v in _defaults(settings).items() if v != name}
    _write_defaults(settings, defaults)
    path.unlink()
    return path


def set_default(name: str, settings: Settings | None = None) -> str:
    """Make ``name`` the default mapper of its backbone; returns the backbone id."""
    settings = settings or Settings.from_env()
    path = _registered_path(name, settings)
    backbone = next(r.backbone for r in registered(settings) if r.path == path)
    _write_defaults(settings, {**_defaults(settings), backbone: name})
    return backbone


def default_for(backbone: str, settings: Settings | None = None) -> str | None:
    """The default mapper of a backbone, if one is set and still registered."""
    settings = settings or Settings.from_env()
    name = _defaults(settings).get(backbone)
    return name if name and (settings.mappers_dir / f"{name}.safetensors").is_file() else None


def known_for(backbone: str) -> KnownMapper | None:
    """A published mapper for a backbone, if p2w knows one."""
    return next((m for m in KNOWN.values() if m.backbone == backbone), None)


def default_or_known(
    backbone: str, settings: Settings, allow_download: bool = False, notify: Callable[[str], object] | None = None
) -> str:
    """The mapper to use when none was named: the backbone's default, else the one shipped with a builtin backbone,
    else — only when ``download`` allows it — the known published one (fetched if needed, then made the default);
    otherwise an error naming the command to run."""
    name = default_for(backbone, settings) or builtin_mapper_for(backbone)
    if name:
        return name
    known = known_for(backbone)
    if not (allow_download and known):
        raise MapperError(missing_mapper_hint(backbone))
    if not (settings.mappers_dir / f"{known.name}.safetensors").is_file():
        if notify:
            notify(f"downloading the mapper {known.name} for {backbone} (--download)")
        download(known.name, settings)
    set_default(known.name, settings)
    return known.name


def builtin_mapper_for(backbone: str) -> str | None:
    """The mapper file shipped with a builtin backbone (e.g. ``p2w-micro-fashion/builtin-...``), if any."""
    for model, path in builtin_mappers().items():
        if backbone == BackboneSpec(model, BUILTIN_TAG).id:
            return str(path)
    return None


def missing_mapper_hint(backbone: str) -> str:
    """The one-line remedy when pic2word needs a mapper and none was given or set as default."""
    known = known_for(backbone)
    fetch = f"p2w mapper download {known.name}" if known else "p2w mapper import FILE --name NAME"
    return (
        f"pic2word mode needs a mapper and {backbone} has no default; run: {fetch} (or train one: "
        f"p2w train --data DIR), or pass --mapper NAME|FILE, or use --mode image|text|average"
    )


def _registered_path(name: str, settings: Settings) -> Path:
    path = settings.mappers_dir / f"{name}.safetensors"
    if not path.is_file() and name in builtin_mappers():
        raise MapperError(
            f"{name!r} is shipped with p2w, not registered: it cannot be removed, and it is the default of its "
            "backbone unless another is made default"
        )
    if not path.is_file():
        names = ", ".join(r.name for r in registered(settings)) or "none"
        raise MapperError(f"no mapper named {name!r} is registered (registered: {names})")
    return path


def _defaults(settings: Settings) -> dict[str, str]:
    try:
        data = json.loads((settings.mappers_dir / "defaults.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_defaults(settings: Settings, defaults: dict[str, str]) -> None:
    settings.mappers_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(settings.mappers_dir / "defaults.json") as tmp:
        tmp.write_text(json.dumps(defaults, indent=1, sort_keys=True), encoding="utf-8")
