"""Where backbone configs and weights come from: open_clip names and tags, the Hugging Face cache, local files.

Nothing here builds a model; ``p2w.core.backbone`` does that with what this module resolves."""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from p2w.core.download import cached_hub_file, hub_file, url_file
from p2w.digest import sha256_file
from p2w.errors import ModelLoadError, ModelUnavailableError
from p2w.spec import BUILTIN_MODELS, BUILTIN_TAG, BackboneSpec

log = logging.getLogger(__name__)


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
    except FileNotFoundError as exc:
        raise ModelUnavailableError(f"model config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
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


def _url_cache(url: str) -> Path:
    """Where open_clip keeps a URL tag's weights (``~/.cache/clip/FILE``): p2w reads and writes the same place."""
    return Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)


def cached_tag_weights(tag_cfg: dict[str, Any]) -> Path | None:
    """The already-downloaded weights file of a tag (Hugging Face cache, or open_clip's ~/.cache/clip), if any."""
    if tag_cfg.get("hf_hub"):
        hit = cached_hub_file(*_hub_candidates(tag_cfg["hf_hub"]))
        if hit is not None:
            return hit
    if tag_cfg.get("url") and _url_cache(tag_cfg["url"]).is_file():
        return _url_cache(tag_cfg["url"])
    return None


def fetch_tag_weights(model: str, tag: str, tag_cfg: dict[str, Any]) -> Path:
    """A tag's weights file: from the cache, else downloaded (``p2w.core.download``); offline fails at once."""
    cached = cached_tag_weights(tag_cfg)
    if cached is not None:
        return cached
    what = f"the weights of {model}/{tag}"
    remedy = "run once online to cache them, or pass a local file: --pretrained PATH.safetensors"
    if tag_cfg.get("hf_hub"):
        repo_id, names = _hub_candidates(tag_cfg["hf_hub"])
        return hub_file(repo_id, names, what, remedy, ModelUnavailableError)
    url = str(tag_cfg.get("url", ""))
    path = url_file(url, _url_cache(url).parent, what, remedy, ModelUnavailableError)
    _check_url_digest(url, path)
    return path


def _check_url_digest(url: str, path: Path) -> None:
    """OpenAI's URLs carry the file's SHA-256 as their last folder; a download that does not match is removed."""
    expected = Path(urlparse(url).path).parent.name
    if len(expected) == 64 and all(c in "0123456789abcdef" for c in expected):
        digest = sha256_file(path)
        if digest != expected:
            path.unlink(missing_ok=True)
            raise ModelUnavailableError(f"the download of {url} is corrupt (sha256 {digest}); run the command again")


def mapper_dims(spec: BackboneSpec) -> tuple[int, int] | None:
    """``(embed_dim, token_width)`` a mapper for ``spec`` must have, read from the config alone (no weights)."""
    cfg, _, _ = model_config(spec)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        return None
    return int(cfg["embed_dim"]), int(text_cfg.get("width", 512))
