"""Where backbone configs and weights come from: open_clip names and tags, the Hugging Face cache, local files.

Nothing here builds a model; `p2w.backbone` does that with what this module resolves.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import pickle
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from p2w.atomic import atomic_path
from p2w.digest import sha256_file
from p2w.errors import ModelLoadError, ModelUnavailableError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")  # --pretrained none: random init (benchmarks, tests)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI CLIP checkpoints only
# models shipped inside the package (config, weights and default mapper in p2w/assets/NAME/), no download ever
BUILTIN_MODELS = ("p2w-micro-fashion",)
BUILTIN_TAG = "builtin"
ASSETS = Path(__file__).resolve().parent / "assets"


def builtin_file(model: str, name: str) -> Path:
    """A file of a builtin model, e.g. ``builtin_file("p2w-micro-fashion", "model.json")``."""
    return ASSETS / model / name


@dataclass(frozen=True)
class BackboneSpec:
    """What the user asked for, e.g. ``BackboneSpec("ViT-L-14", "openai")`` or ``BackboneSpec("cfg.json", "w.pt")``."""

    model: str
    pretrained: str | None = None

    @property
    def config_path(self) -> Path | None:
        """The model-config JSON file when ``model`` names one, else None (an open_clip model name)."""
        if self.model in BUILTIN_MODELS:
            return builtin_file(self.model, "model.json")
        path = Path(self.model).expanduser()
        if path.suffix.lower() == ".json" or path.is_file():
            return path
        return None

    @property
    def weights_path(self) -> Path | None:
        """The local weights file when ``pretrained`` names one, else None (a tag, or random init)."""
        if self.is_random:
            return None
        if self.is_builtin:
            return builtin_file(self.model, "model.safetensors")
        path = Path(str(self.pretrained)).expanduser()
        looks_like_path = os.sep in str(self.pretrained) or path.suffix.lower() in WEIGHT_SUFFIXES
        if path.is_file() or looks_like_path:
            return path
        return None

    @property
    def is_random(self) -> bool:
        """True for ``pretrained`` None / "none" / "random": random initialisation, no weights."""
        return not self.pretrained or str(self.pretrained).lower() in RANDOM_TAGS

    @property
    def is_builtin(self) -> bool:
        """True for a model shipped with p2w and its own weights (``--pretrained builtin``)."""
        return self.model in BUILTIN_MODELS and str(self.pretrained).lower() == BUILTIN_TAG

    @property
    def tag(self) -> str | None:
        """The open_clip pretrained tag, when ``pretrained`` is one."""
        return None if self.is_random or self.weights_path else str(self.pretrained)

    @property
    def id(self) -> str:
        """Stable backbone id stored with mappers and catalogs, e.g. ``"ViT-L-14/openai"``.

        Files are identified by content: ``"<stem>-<sha256[:12]>"``.
        """
        cfg = self.config_path
        model = f"{cfg.stem}-{_sha256(cfg)[:12]}" if cfg and self.model not in BUILTIN_MODELS else self.model
        weights = self.weights_path
        if self.is_random:
            pretrained = "random"
        elif self.is_builtin and weights is not None:
            pretrained = f"{BUILTIN_TAG}-{_sha256(weights)[:12]}"  # a new release of the weights is a new backbone
        elif weights is not None:
            pretrained = f"{weights.stem}-{_sha256(weights)[:12]}"
        else:
            pretrained = str(self.pretrained).lower().replace("-", "_")
        return f"{model}/{pretrained}"


@dataclass(frozen=True)
class ResolvedBackbone:
    """Everything needed to build a model: its open_clip config, weights file, and loading flags."""

    label: str  # for messages, e.g. "ViT-L-14/openai"
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]  # overrides of open_clip's PreprocessCfg
    weights: Path | None
    quick_gelu: bool


def resolve(spec: BackboneSpec) -> ResolvedBackbone:
    """Find the config and weights for ``spec``, downloading a tag's weights only when not cached and online."""
    model_cfg, preprocess_cfg, name = model_config(spec)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    label = f"{name}/{spec.pretrained if not spec.is_random else 'random'}"
    weights: Path | None = None
    if spec.weights_path is not None:
        weights = spec.weights_path
        if not weights.is_file():
            where = "p2w's package data (reinstall p2w)" if spec.is_builtin else "disk"
            raise ModelUnavailableError(f"weights file not found: {weights} (looked on {where})")
    elif spec.tag is not None:
        if spec.model in BUILTIN_MODELS:
            raise ModelUnavailableError(
                f"{spec.model} is embedded in p2w: use --pretrained {BUILTIN_TAG} (its weights), none (random) or PATH"
            )
        if spec.config_path is not None:
            raise ModelUnavailableError(
                f"--pretrained {spec.tag!r} is a tag, but tags only exist for open_clip model names; "
                "with a model-config file, pass a weights file: --pretrained PATH"
            )
        tag_cfg = _tag_config(spec.model, spec.tag)
        quick_gelu = quick_gelu or bool(tag_cfg.get("quick_gelu", False))
        keys = ("mean", "std", "interpolation", "resize_mode")
        preprocess_cfg = {**preprocess_cfg, **{k: tag_cfg[k] for k in keys if k in tag_cfg}}
        weights = fetch_tag_weights(spec.model, spec.tag, tag_cfg)
    return ResolvedBackbone(label, model_cfg, preprocess_cfg, weights, quick_gelu)


def model_config(spec: BackboneSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The open_clip model config of ``spec``, its preprocessing overrides, and a display name."""
    path = spec.config_path
    if path is None:
        import open_clip

        cfg = open_clip.get_model_config(spec.model)
        if cfg is None:
            close = difflib.get_close_matches(spec.model, open_clip.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise ModelUnavailableError(f"unknown open_clip model {spec.model!r}{hint} (or pass a model-config .json)")
        return cfg, {}, spec.model
    return (*read_model_config(path), spec.model if spec.model in BUILTIN_MODELS else path.stem)


def read_model_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an open_clip model-config JSON (plain, or ``{"model_cfg": ..., "preprocess_cfg": ...}`` as on the Hub)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailableError(f"model config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"model config {path} must hold a JSON object")
    cfg = data.get("model_cfg", data)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ModelLoadError(
            f"model config {path} lacks {', '.join(missing)}; it must follow open_clip's model_configs/*.json schema"
        )
    return dict(cfg), dict(data.get("preprocess_cfg", {}))


def _tag_config(model: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = (
            f"known tags for {model}: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {model}"
        )
        raise ModelUnavailableError(f"{tag!r} is neither a pretrained tag nor an existing file ({known})")
    return dict(cfg)


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if hf_hub.endswith("/"):  # open_clip's convention: repo id only, default file names
        return hf_hub.rstrip("/"), [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    repo_id, filename = os.path.split(hf_hub)
    stem, suffix = os.path.splitext(filename)
    names = [stem + ".safetensors"] if suffix in (".bin", ".pth") else []
    return repo_id, [*names, filename]


def cached_tag_weights(tag_cfg: dict[str, Any]) -> Path | None:
    """The already-downloaded weights file of a tag (Hugging Face cache, or open_clip's ~/.cache/clip), if any."""
    from huggingface_hub import try_to_load_from_cache

    if tag_cfg.get("hf_hub"):
        repo_id, names = _hub_candidates(tag_cfg["hf_hub"])
        for name in names:
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str):
                return Path(hit)
    if tag_cfg.get("url"):
        local = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(tag_cfg["url"]).path)
        if local.is_file():
            return local
    return None


def fetch_tag_weights(model: str, tag: str, tag_cfg: dict[str, Any]) -> Path:
    """A tag's weights file: from the cache, else downloaded; offline fails at once with what to do."""
    cached = cached_tag_weights(tag_cfg)
    if cached is not None:
        return cached
    from huggingface_hub import constants

    reason = offline_reason(
        constants.ENDPOINT if tag_cfg.get("hf_hub") else tag_cfg.get("url", ""), hub=bool(tag_cfg.get("hf_hub"))
    )
    if reason is None:
        return _download(model, tag, tag_cfg)
    raise ModelUnavailableError(
        f"cannot load {model}/{tag}: its weights are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {reason}; run once online to cache them, or pass a local file: --pretrained PATH.safetensors"
    )


def _download(model: str, tag: str, tag_cfg: dict[str, Any]) -> Path:
    import open_clip

    log.info("downloading weights of %s/%s", model, tag)
    try:
        return Path(open_clip.download_pretrained(tag_cfg))
    except Exception as exc:  # network/hub errors come in many types; the message is what matters
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"downloading the weights of {model}/{tag} failed ({first}); "
            "retry, or pass a local file: --pretrained PATH.safetensors"
        ) from None


def offline_reason(url: str, hub: bool = True) -> str | None:
    """Why ``url`` cannot be downloaded from now (``HF_HUB_OFFLINE``, or its host unreachable), or None.

    A quick probe, so that an offline machine fails in a second instead of after the hub client's retries.
    """
    from huggingface_hub import constants

    if hub and constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    if not _reachable(url):
        host = urlparse(url).hostname or url
        return f"{host} cannot be reached" + (" (set HF_HUB_OFFLINE=1 to skip this check)" if hub else "")
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch file loaded with ``weights_only=True`` (never pickle code)."""
    import torch

    kind = _sniff(path)
    if kind == "torchscript":
        raise ModelLoadError(
            f"{path} is a TorchScript archive (OpenAI's original CLIP format), which can carry code and is not "
            "loaded; use the open_clip tag (--pretrained openai) or save torch.jit.load(FILE).state_dict() "
            "as safetensors once"
        )
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{path} holds more than tensors and is refused (weights_only=True): {first}") from None
    except Exception as exc:  # corrupt files raise a variety of errors
        raise ModelLoadError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    return tensors_of(obj, path)


def tensors_of(obj: Any, path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The tensor entries of a checkpoint object (``obj[key]`` when present), ``module.`` prefix removed."""
    import torch

    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _sniff(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot open weights file {path}: {exc.strerror or exc}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") for n in zf.namelist()):
                return "torchscript"
    return "torch"


_DIGESTS: dict[str, str] = {}
_DISK_CACHE_MIN_BYTES = 64 << 20  # smaller files hash in well under a second


def _sha256(path: Path) -> str:
    """Content hash; large files' hashes are kept in ``P2W_HOME/cache/digests.json`` by (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in _DIGESTS:
        disk = _digest_cache_file() if st.st_size >= _DISK_CACHE_MIN_BYTES else None
        known = _read_json(disk) if disk else {}
        if key not in known:
            known[key] = sha256_file(path)
            if disk:
                _write_json(disk, known)
        _DIGESTS[key] = known[key]
    return _DIGESTS[key]


def _digest_cache_file() -> Path:
    from p2w.settings import Settings

    return Settings.from_env().home / "cache" / "digests.json"


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, str]) -> None:
    """Best effort (a read-only home only costs a re-hash next time); atomic, so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data), encoding="utf-8")
    except OSError as exc:
        log.debug("cannot write digest cache %s: %s", path, exc)


def mapper_dims(spec: BackboneSpec) -> tuple[int, int] | None:
    """``(embed_dim, token_width)`` a mapper for ``spec`` must have, read from the config alone (no weights)."""
    cfg, _, _ = model_config(spec)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        return None
    return int(cfg["embed_dim"]), int(text_cfg.get("width", 512))
