"""The photo library: ``index`` (incremental, crash-safe) and ``search`` over one backbone's catalog."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2w import ann as ann_mod
from p2w.catalog import Catalog, catalog_dir, writer_lock
from p2w.digest import sha256_many
from p2w.errors import P2WError
from p2w.scan import Found, scan
from p2w.settings import Settings
from p2w.weights import BackboneSpec

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class IndexReport:
    """What an index run did; ``skipped`` lists (path, reason)."""

    catalog: Path
    backbone: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0  # files in the catalog afterwards
    seconds: float = 0.0
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "catalog": str(self.catalog),
            "backbone": self.backbone,
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    score: float
    path: str
    size: int
    mtime: float


@dataclass
class _Plan:
    """What an index run has to do, found without decoding any image."""

    embed: list[tuple[Found, str | None]] = field(default_factory=list)  # (file, content hash if known)
    reuse: list[tuple[Found, str, bytes, bool]] = field(default_factory=list)  # (file, hash, vector, is_move)
    touch: list[tuple[str, int, int]] = field(default_factory=list)
    remove: list[tuple[str, str]] = field(default_factory=list)  # (path, hash) of files gone from disk
    replaced: set[str] = field(default_factory=set)  # paths whose content changed
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def catalog_for(spec: BackboneSpec, settings: Settings | None = None) -> Path:
    """The catalog folder of a backbone."""
    return catalog_dir((settings or Settings.from_env()).home, spec.id)


def index(
    roots: Sequence[Path],
    spec: BackboneSpec,
    load_engine: Callable[[], Any],
    settings: Settings | None = None,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    batch_size: int = 64,
    workers: int = 4,
    progress: Progress | None = None,
) -> IndexReport:
    """Bring the catalog of ``spec`` up to date with ``roots``; the model is loaded only if something needs embedding.

    Each batch of new vectors is committed as it is made, so an interruption (Ctrl-C, ``kill -9``) loses at most
    the batch in flight; the next run resumes. A second writer on the same catalog is refused.
    """
    start = time.perf_counter()
    for root in roots:
        if not root.exists():
            raise P2WError(f"not found: {root}")
    folder = catalog_for(spec, settings)
    report = IndexReport(folder, spec.id)
    with writer_lock(folder):
        catalog = Catalog(folder, spec.id, create=True)
        try:
            base = ann_mod.load(catalog, save_rebuilt=False) if catalog.count() else None
            plan = _plan(
                catalog, [os.path.abspath(r.expanduser()) for r in roots], exclude, include_hidden, workers, progress
            )
            _apply(catalog, plan, report, load_engine, batch_size, workers, progress)
            _finish_ann(catalog, base)
        finally:
            report.total = catalog.count()
            catalog.close()
    report.skipped = plan.skipped
    report.unchanged = plan.unchanged
    report.seconds = time.perf_counter() - start
    return report


def _plan(
    catalog: Catalog, roots: list[str], exclude: Sequence[str], hidden: bool, workers: int, progress: Progress | None
) -> _Plan:
    known = catalog.rows_under(roots)
    skipped = catalog.skipped_under(roots)
    found = list(scan([Path(r) for r in roots], exclude, hidden))
    plan = _Plan()
    seen = {f.path for f in found}
    plan.remove = [(p, row.hash) for p, row in known.items() if p not in seen]
    fresh: list[Found] = []
    for f in found:
        row = known.get(f.path)
        old_skip = skipped.get(f.path)
        if row and (row.size, row.mtime_ns) == (f.size, f.mtime_ns):
            plan.unchanged += 1
            continue
        if old_skip and old_skip[:2] == (f.size, f.mtime_ns):
            plan.skipped.append((f.path, old_skip[2]))
            continue
        fresh.append(f)
    hashes = sha256_many(
        [f.path for f in fresh], workers, (lambda d, t: progress("hashing", d, t)) if progress else None
    )
    by_hash = catalog.vectors_by_hash(h for h in hashes.values() if h)
    removed_hashes = {h for _, h in plan.remove}
    for f in fresh:
        digest, row = hashes.get(f.path), known.get(f.path)
        if digest is None:
            plan.skipped.append((f.path, "cannot be read"))
        elif row and row.hash == digest:
            plan.touch.append((f.path, f.size, f.mtime_ns))
            plan.unchanged += 1
        else:
            if row:
                plan.replaced.add(f.path)
            if digest in by_hash:
                plan.reuse.append((f, digest, by_hash[digest], digest in removed_hashes and not row))
            else:
                plan.embed.append((f, digest))
    return plan


def _apply(
    catalog: Catalog,
    plan: _Plan,
    report: IndexReport,
    load_engine: Callable[[], Any],
    batch_size: int,
    workers: int,
    progress: Progress | None,
) -> None:
    """Write the plan: touches and reused vectors first, new embeddings batch by batch, removals last."""
    if plan.touch:
        catalog.touch(plan.touch)
    if plan.reuse:
        catalog.put([(f.path, f.size, f.mtime_ns, h, v) for f, h, v, _ in plan.reuse], len(plan.reuse[0][2]) // 4)
        report.moved = sum(1 for *_, move in plan.reuse if move)
        report.updated += sum(1 for f, *_ in plan.reuse if f.path in plan.replaced)
        report.added += len(plan.reuse) - report.moved - report.updated
    try:
        if plan.embed:
            _embed(catalog, plan, load_engine, batch_size, workers, progress, report)
    except KeyboardInterrupt:
        report.interrupted = True  # what is committed stays; the next run resumes
        return
    catalog.remove([p for p, _ in plan.remove])
    moved_hashes = {h for _, h, _, move in plan.reuse if move}
    report.removed = sum(1 for _, h in plan.remove if h not in moved_hashes)


def _embed(
    catalog: Catalog,
    plan: _Plan,
    load_engine: Callable[[], Any],
    batch_size: int,
    workers: int,
    progress: Progress | None,
    report: IndexReport,
) -> None:
    from p2w.features import FileDataset, iter_encoded  # torch: only when something is embedded

    engine = load_engine()
    bb = engine.backbone
    size = bb.model.visual.image_size
    draft = size if isinstance(size, int) else min(size)
    files = [f for f, _ in plan.embed]
    dataset = FileDataset([f.path for f in files], bb.preprocess, draft=draft)
    done = 0
    for batch in iter_encoded(bb, dataset, batch_size, workers):
        rows, skips = [], []
        for i, feat, why in batch:
            f, digest = plan.embed[i]
            if feat is None:
                skips.append((f.path, f.size, f.mtime_ns, why))
                plan.skipped.append((f.path, why))
                continue
            vec = (feat / feat.norm().clamp_min(1e-12)).numpy().astype(np.float32)
            rows.append((f.path, f.size, f.mtime_ns, digest or "", vec.tobytes()))
        catalog.put(rows, bb.embed_dim)
        if skips:
            catalog.skip(skips)
        report.updated += sum(1 for r in rows if r[0] in plan.replaced)
        report.added += sum(1 for r in rows if r[0] not in plan.replaced)
        done += len(batch)
        if progress:
            progress("embedding", done, len(files))


def _finish_ann(catalog: Catalog, base: ann_mod.Ann | None) -> None:
    """Bring the ANN file to the catalog's generation: apply this run's changes, or rebuild."""
    if catalog.count() == 0:
        ann_mod.remove(catalog.folder)
        return
    if base is None:
        ann_mod.save(ann_mod.build(catalog), catalog.folder)
        return
    if base.generation == catalog.generation and ann_mod.is_current(catalog.folder, catalog.generation):
        return  # nothing added or removed, and the saved index is current: no rewrite
    current = set(catalog.ids())
    present = set(base.index.get_ids_list())
    ann_mod.save(ann_mod.update(base, sorted(current - present), sorted(present - current), catalog), catalog.folder)


def open_catalog(spec: BackboneSpec, settings: Settings | None = None) -> Catalog:
    """The catalog of ``spec`` for searching; a missing or empty one is an error naming the command that fills it."""
    catalog = Catalog(catalog_for(spec, settings), spec.id)
    if catalog.count() == 0:
        catalog.close()
        raise P2WError(f"the catalog of {spec.id} is empty; add photos with: p2w index DIR")
    return catalog


def search(
    catalog: Catalog, query: np.ndarray, k: int = 10, within: Path | None = None, ef: int | None = None
) -> list[Hit]:
    """The ``k`` catalogued photos closest to ``query`` (a unit vector), optionally only under ``within`` (exact).
    ``ef`` widens the approximate search (default ``p2w.ann.default_ef(dim)``).

    Files deleted since they were indexed are left out of the results.
    """
    if query.shape != (catalog.dim,):
        raise P2WError(f"query has {query.shape[-1]} dimensions but the catalog holds {catalog.dim}-d vectors")
    if within is not None:
        ids, scores = _exact_within(catalog, query, os.path.abspath(within.expanduser()), 2 * k + 8)
    else:
        ids, scores = ann_mod.load(catalog).query(query, 2 * k + 8, ef=ef)
    rows = catalog.rows_for([int(i) for i in ids])
    hits: list[Hit] = []
    for i, score in zip(ids, scores, strict=True):
        row = rows.get(int(i))
        if row is None or not os.path.exists(row.path):
            continue
        hits.append(Hit(len(hits) + 1, float(score), row.path, row.size, row.mtime_ns / 1e9))
        if len(hits) == k:
            break
    return hits


def _exact_within(catalog: Catalog, query: np.ndarray, folder: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over the files under a folder (``--in DIR``)."""
    ids = catalog.ids_under(folder)
    if not ids:
        raise P2WError(f"no catalogued photos under {folder}; index it with: p2w index {folder}")
    order, vectors = ann_mod.matrix(catalog.vectors_for(ids))
    scores = vectors @ query.astype(np.float32)
    top = np.argsort(-scores)[:k]
    return order[top], scores[top]


@dataclass(frozen=True)
class CatalogInfo:
    """What ``p2w status`` shows of one catalog."""

    backbone: str
    files: int
    skipped: int
    bytes_on_disk: int
    folder: Path
    ann_current: bool


def status(settings: Settings | None = None) -> list[CatalogInfo]:
    """Every catalog in ``P2W_HOME/catalogs``."""
    root = (settings or Settings.from_env()).home / "catalogs"
    out = []
    for folder in sorted(p for p in root.glob("*") if (p / "catalog.sqlite").is_file()) if root.is_dir() else []:
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
