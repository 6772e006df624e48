"""One place for settings and paths: environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from p2w.spec import DEFAULT_MODEL, BackboneSpec, pretrained_for


@dataclass(frozen=True)
class Settings:
    """Resolved settings, e.g. ``Settings.from_env().mappers_dir``."""

    home: Path
    model: str = DEFAULT_MODEL
    pretrained: str | None = None  # None: the model's own default (see ``pretrained_for``)
    device: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``P2W_HOME``, ``P2W_MODEL``, ``P2W_PRETRAINED`` and ``P2W_DEVICE`` (empty means unset)."""
        env = os.environ if env is None else env
        home = env.get("P2W_HOME") or _default_home()
        return cls(
            home=Path(home).expanduser(),
            model=env.get("P2W_MODEL") or DEFAULT_MODEL,
            pretrained=env.get("P2W_PRETRAINED") or None,
            device=env.get("P2W_DEVICE") or "auto",
        )

    def pretrained_for(self, model: str) -> str:
        """``P2W_PRETRAINED`` when set, else the model's default (``p2w.spec.pretrained_for``)."""
        return self.pretrained or pretrained_for(model)

    def backbone(self, model: str | None = None, pretrained: str | None = None) -> BackboneSpec:
        """The backbone the user asked for, defaults filled in, e.g. ``backbone("p2w-micro-fashion")``."""
        model = model or self.model
        return BackboneSpec(model, pretrained or self.pretrained_for(model), digest_cache=self.cache_dir)

    @property
    def cache_dir(self) -> Path:
        """Derived data that can be rebuilt: ``<home>/cache`` (content hashes of large files)."""
        return self.home / "cache"

    @property
    def mappers_dir(self) -> Path:
        """Where named mappers live: ``<home>/mappers/NAME.safetensors``."""
        return self.home / "mappers"


def _default_home() -> str:
    import platformdirs

    return platformdirs.user_data_dir("p2w", appauthor=False)
