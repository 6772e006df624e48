"""The mapper registry of ``P2W_HOME/mappers``: names, the known published mappers, the mappers shipped with p2w,
import, list, remove and per-backbone defaults. Every name-to-path rule lives here."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2w.atomic import atomic_path
from p2w.core.resolve import mapper_dims
from p2w.errors import MapperError
from p2w.mappers.methods import Method, method_of
from p2w.settings import Settings
from p2w.spec import BUILTIN_MODELS, BUILTIN_TAG, BackboneSpec, builtin_file

log = logging.getLogger(__name__)


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
    method: str = "pic2word"  # p2w.mappers.methods

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
        ),
        KnownMapper(
            name="lincir-vit-l-14",
            model="ViT-L-14",
            pretrained="openai",
            source="hf://navervision/zeroshot-cir-models/lincir_large.pt",
            sha256=None,  # not published by the authors; p2w prints the digest of what it downloads
            licence="CC BY-NC 4.0 (navervision/lincir)",
            notes="LinCIR's phi for OpenAI CLIP ViT-L/14 (trained on captions only), from the authors' Hugging Face "
            "repository; a torch file {'epoch', 'Phi': state dict}",
            method="lincir",
        ),
        KnownMapper(
            name="searle-vit-b-32",
            model="ViT-B-32",
            pretrained="openai",
            source="https://github.com/miccunifi/SEARLE/releases/download/weights/SEARLE_ViT-B32.pt",
            sha256=None,
            licence="CC BY-NC 4.0 (miccunifi/SEARLE)",
            notes="SEARLE's phi for OpenAI CLIP ViT-B/32, the file its torch.hub entry loads; {'Phi': state dict}",
            method="searle",
        ),
        KnownMapper(
            name="searle-vit-l-14",
            model="ViT-L-14",
            pretrained="openai",
            source="https://github.com/miccunifi/SEARLE/releases/download/weights/SEARLE_ViT-L14.pt",
            sha256=None,
            licence="CC BY-NC 4.0 (miccunifi/SEARLE)",
            notes="SEARLE-XL: SEARLE's phi for OpenAI CLIP ViT-L/14, the file its torch.hub entry loads",
            method="searle",
        ),
    ]
}


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
    method: str = "pic2word"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "backbone": self.backbone,
            "method": self.method,
            "embed_dim": self.embed_dim,
            "token_width": self.token_width,
            "bytes": self.size,
            "source": self.source,
            "default": self.is_default,
            "path": str(self.path),
        }


def file_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read from its JSON header with the standard library (no tensor, no
    torch: the warm ``p2w search`` reads it); an unreadable or foreign file has none."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100 << 20:  # the header's length; anything else is not safetensors
                return {}
            meta = json.loads(f.read(size)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def registered(settings: Settings | None = None) -> list[Registered]:
    """Every mapper in the registry, read from the files' metadata (no tensor is loaded)."""
    settings = settings or Settings.from_env()
    defaults = _defaults(settings)
    out = []
    for path in sorted(settings.mappers_dir.glob("*.safetensors")):
        meta = file_metadata(path)  # a foreign or damaged file is shown, not fatal
        backbone = meta.get("backbone", "?")
        out.append(
            Registered(
                path.stem,
                path,
                backbone,
                int(meta.get("embed_dim", 0)),
                int(meta.get("token_width", 0)),
                path.stat().st_size,
                meta.get("source", "" if meta.get("format") == MAPPER_FORMAT else "unknown"),
                defaults.get(backbone) == path.stem,
                meta.get("method", "pic2word"),
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
    return name if name and registry_file(settings.mappers_dir, name).is_file() else None


def known_for(backbone: str) -> KnownMapper | None:
    """A published mapper for a backbone, if p2w knows one."""
    return next((m for m in KNOWN.values() if m.backbone == backbone), None)


def file_method(path: Path) -> Method | None:
    """The method a p2w mapper file records, read from its metadata alone (no tensor, no torch); None for other
    files (their method is known once they are read)."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    meta = file_metadata(path)  # a foreign or damaged file has none: read_mapper will say what is wrong
    return method_of(meta, meta.get("network")) if meta else None


def mapper_label(path: Path) -> str:
    """How a mapper file is called: its registered name (the file's stem), or its backbone's name when it is the
    mapper shipped with a builtin backbone."""
    shipped = {p.resolve(): model for model, p in builtin_mappers().items()}
    return shipped.get(path.resolve(), path.stem)


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
        f"p2w train --data DIR), or pass --mapper NAME|FILE, or use a mode that needs none: --mode slerp"
    )


def _registered_path(name: str, settings: Settings) -> Path:
    path = registry_file(settings.mappers_dir, name)
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


MAPPER_FORMAT = "p2w-mapper"  # the "format" metadata of p2w's mapper files (written by p2w.mappers.files)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, what: str = "mapper name") -> str:
    """``name`` when it is a valid mapper (or run) name: letters, digits, '.', '_', '-', at most 100."""
    if not NAME_RE.match(name):
        raise MapperError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


def registry_file(mappers_dir: Path, name: str) -> Path:
    """Where the mapper registered as ``name`` lives: ``mappers_dir/NAME.safetensors``."""
    return mappers_dir / f"{name}.safetensors"


def free_name(mappers_dir: Path, name: str, overwrite: bool = False) -> Path:
    """The file a new mapper ``name`` will be written to; an invalid or taken name (unless ``overwrite``) is refused
    before any work is done."""
    target = registry_file(mappers_dir, check_name(name))
    if target.exists() and not overwrite:
        raise MapperError(f"a mapper named {name!r} exists already ({target}); pick another --name or pass --force")
    return target


def mapper_path(name_or_path: str, mappers_dir: Path) -> Path:
    """A registered name -> ``mappers_dir/NAME.safetensors`` (it wins over a file of that name in the working folder:
    ``./NAME`` names the file); a shipped mapper's name -> its file; anything that exists or looks like a path ->
    itself."""
    if NAME_RE.match(name_or_path):
        registered = registry_file(mappers_dir, name_or_path)
        if registered.is_file():
            return registered
        shipped = builtin_mappers().get(name_or_path)
        if shipped is not None:
            return shipped
    path = Path(name_or_path).expanduser()
    if path.exists() or os.sep in name_or_path or path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return path
    known = sorted(p.stem for p in mappers_dir.glob("*.safetensors")) if mappers_dir.is_dir() else []
    listing = f"registered: {', '.join(known)}" if known else f"none are registered in {mappers_dir}"
    raise MapperError(
        f"no mapper named {name_or_path!r} ({listing}); import one with: p2w mapper import FILE --name NAME"
    )
