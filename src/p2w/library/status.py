"""``status``: what ``p2w status`` shows of every catalog, read without loading a model."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2w.library import ann as ann_mod
from p2w.library.catalog import catalog_for
from p2w.settings import Settings
from p2w.spec import BackboneSpec


@dataclass(frozen=True)
class CatalogInfo:
    """What ``p2w status`` shows of one catalog."""

    backbone: str
    files: int
    skipped: int
    bytes_on_disk: int
    folder: Path
    ann_current: bool

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "backbone": self.backbone,
            "files": self.files,
            "skipped": self.skipped,
            "bytes": self.bytes_on_disk,
            "folder": str(self.folder),
            "index_current": self.ann_current,
        }


def status(settings: Settings | None = None, backbone: BackboneSpec | None = None) -> list[CatalogInfo]:
    """Every catalog in ``P2W_HOME/catalogs``, or only ``backbone``'s."""
    settings = settings or Settings.from_env()
    root = settings.home / "catalogs"
    folders = sorted(p for p in root.glob("*") if (p / "catalog.sqlite").is_file()) if root.is_dir() else []
    if backbone is not None:
        folders = [f for f in folders if f == catalog_for(backbone, settings)]
    out = []
    for folder in folders:
        con = sqlite3.connect(f"file:{folder / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            files = con.execute("SELECT count(*) FROM files").fetchone()[0]
            skipped = con.execute("SELECT count(*) FROM skipped").fetchone()[0]
        finally:
            con.close()
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        current = ann_mod.is_current(folder, meta.get("generation"))
        out.append(CatalogInfo(meta.get("backbone", "?"), files, skipped, size, folder, current))
    return out
