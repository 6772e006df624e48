"""``forget``: drop the photos of folders gone for good from a catalog (``p2w forget``); no file on disk is touched."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from p2w.core.lock import writer_lock
from p2w.errors import P2WError
from p2w.fspath import gone
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, catalog_for
from p2w.library.index import finish_ann
from p2w.settings import Settings
from p2w.spec import BackboneSpec


def forget(
    paths: Sequence[Path], spec: BackboneSpec, settings: Settings | None = None, force: bool = False
) -> dict[str, int]:
    """Drop every photo at or under ``paths`` from the catalog of ``spec`` (a folder gone for good: deleted, or a
    drive that will not come back); no file on disk is touched. Returns the number dropped per path.

    A path that still exists is refused unless ``force``: its photos would come back with the next ``p2w index``.
    """
    folder = catalog_for(spec, settings)
    absolute = [os.path.abspath(p.expanduser()) for p in paths]
    present = [p for p in absolute if not gone(p)]
    if present and not force:
        raise P2WError(
            f"{present[0]} exists; p2w forget drops photos of folders gone from disk (pass --force to drop them anyway)"
        )
    with writer_lock(folder):
        catalog = Catalog(folder, spec.id)
        try:
            base = ann_mod.load(catalog, save_rebuilt=False) if catalog.count() else None
            dropped = {p: catalog.forget_under(p) for p in absolute}
            finish_ann(catalog, base)
        finally:
            catalog.close()
    return dropped
