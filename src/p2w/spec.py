"""What a backbone is called: ``BackboneSpec`` (model name or config file + tag or weights file), its stable id, and
the names of the models shipped with p2w. Pure values: nothing here imports torch or opens a model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from p2w.digest import cached_sha256

DEFAULT_MODEL = "ViT-L-14"  # the backbone of the published Pic2Word mapper
DEFAULT_PRETRAINED = "openai"
RANDOM_TAGS = ("none", "random")  # --pretrained none: random init (benchmarks, tests)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
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
    # where large files' content hashes are remembered between runs (``Settings.backbone`` passes P2W_HOME/cache)
    digest_cache: Path | None = field(default=None, compare=False, repr=False)

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
        model = (
            f"{cfg.stem}-{cached_sha256(cfg, self.digest_cache)[:12]}"
            if cfg and self.model not in BUILTIN_MODELS
            else self.model
        )
        weights = self.weights_path
        if self.is_random:
            pretrained = "random"
        elif self.is_builtin and weights is not None:
            # a new release of the weights is a new backbone
            pretrained = f"{BUILTIN_TAG}-{cached_sha256(weights, self.digest_cache)[:12]}"
        elif weights is not None:
            pretrained = f"{weights.stem}-{cached_sha256(weights, self.digest_cache)[:12]}"
        else:
            pretrained = str(self.pretrained).lower().replace("-", "_")
        return f"{model}/{pretrained}"


def pretrained_for(model: str) -> str:
    """The default ``pretrained`` of a model: ``builtin`` for p2w's embedded models, else ``openai``."""
    return BUILTIN_TAG if model in BUILTIN_MODELS else DEFAULT_PRETRAINED


def safe_name(backbone_id: str) -> str:
    """A backbone id made a file or folder name, e.g. ``"ViT-L-14/openai"`` -> ``"ViT-L-14_openai"``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id)


def options_for(backbone_id: str) -> str | None:
    """The ``--model``/``--pretrained`` options that select ``backbone_id`` again, e.g. ``"ViT-B-32/openai"`` ->
    ``"--model ViT-B-32"`` (its tag is the model's default), ``"p2w-micro-fashion/builtin-..."`` -> ``"--model
    p2w-micro-fashion"``; None where files stand behind the id (their names are in it, their paths are not)."""
    model, _, tag = backbone_id.partition("/")
    if model in BUILTIN_MODELS:
        return f"--model {model}" if tag.startswith(BUILTIN_TAG) else None
    if re.search(r"-[0-9a-f]{12}$", model) or re.search(r"-[0-9a-f]{12}$", tag):
        return None  # a config or weights file, named by content
    return f"--model {model}" + ("" if tag == pretrained_for(model) else f" --pretrained {tag}")
