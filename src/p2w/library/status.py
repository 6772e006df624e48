"""``status``: what ``p2w status`` shows of every catalog, read without loading a model."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2w import fspath
from p2w.library import ann as ann_mod
from p2w.library.catalog import catalog_for
from p2w.library.schema import count_files, gone_roots
from p2w.settings import Settings
from p2w.spec import BackboneSpec


@dataclass(frozen=True)
class CatalogInfo:
    """What ``p2w status`` shows of one catalog; ``gone`` lists the indexed folders no longer on disk with the
    photos still held from each (``p2w forget FOLDER`` drops them)."""

    backbone: str
    files: int  # photos and videos (a video counts once, however many frames it has)
    skipped: int
    bytes_on_disk: int
    folder: Path
    ann_current: bool
    gone: list[tuple[str, int]] = field(default_factory=list)
    videos: int = 0  # of the files

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "backbone": self.backbone,
            "files": self.files,
            "videos": self.videos,
            "skipped": self.skipped,
            "bytes": self.bytes_on_disk,
            **fspath.to_json(str(self.folder), "folder"),
            "index_current": self.ann_current,
            "gone": [{**fspath.to_json(p), "photos": n} for p, n in self.gone],
        }


def status(settings: Settings | None = None, backbone: BackboneSpec | None = None) -> list[CatalogInfo]:
    """Every catalog in ``P2W_HOME/catalogs``, or only ``backbone``'s."""
    settings = settings or Settings.from_env()
    root = settings.home / "catalogs"
    folders = sorted(p for p in root.glob("*") if (p / "catalog.sqlite").is_file()) if root.is_dir() else []
    if backbone is not None:
        folders = [f for f in folders if f == catalog_for(backbone, settings)]
    return [_info(folder) for folder in folders]


def _info(folder: Path) -> CatalogInfo:
    # a read-only URI: the path percent-encoded (a '#' or '?' in P2W_HOME is part of the name, not of the URI)
    con = sqlite3.connect(f"{(folder / 'catalog.sqlite').absolute().as_uri()}?mode=ro", uri=True)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        files, videos = count_files(con)
        skipped = con.execute("SELECT count(*) FROM skipped").fetchone()[0]
        gone = gone_roots(con)
    finally:
        con.close()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    current = ann_mod.is_current(folder, meta.get("generation"))
    return CatalogInfo(meta.get("backbone", "?"), files, skipped, size, folder, current, gone, videos)
