"""``index``: bring a backbone's catalog up to date with folders of photos, incrementally and crash-safe."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2w import fspath
from p2w.core.dates import Taken, capture_times
from p2w.core.images import IMAGE_SUFFIXES
from p2w.core.lock import writer_lock
from p2w.core.video import VIDEO_SUFFIXES, Videos, is_video
from p2w.core.walk import Beneath, Found, scan
from p2w.digest import sha256_many
from p2w.errors import P2WError
from p2w.fspath import gone
from p2w.library import ann as ann_mod
from p2w.library.catalog import Catalog, Row, Stored, catalog_for
from p2w.progress import Progress
from p2w.settings import Settings
from p2w.spec import BackboneSpec

log = logging.getLogger(__name__)


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
    dated: int = 0  # photos catalogued before capture times were kept that got theirs
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason): its photos were kept
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
            "dated": self.dated,
            "skipped": [{**fspath.to_json(p), "reason": r} for p, r in self.skipped],
            "unreadable": [{**fspath.to_json(p), "reason": r} for p, r in self.unreadable],
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
        }


@dataclass
class _Plan:
    """What an index run has to do, found without decoding any image."""

    embed: list[tuple[Found, str | None]] = field(default_factory=list)  # (file, content hash if known)
    videos: list[tuple[Found, str]] = field(default_factory=list)  # (video, content hash): to be decoded
    reuse: list[tuple[Found, str, Stored, bool]] = field(default_factory=list)  # (file, hash, vector, is_move)
    touch: list[tuple[str, int, int]] = field(default_factory=list)
    dates: dict[str, Taken] = field(default_factory=dict)  # the capture time of every file written
    redate: list[tuple[str, Taken]] = field(default_factory=list)  # unchanged files catalogued without one
    remove: list[tuple[str, str]] = field(default_factory=list)  # (path, hash) of files gone from disk
    unskip: list[str] = field(default_factory=list)  # skipped files gone from disk
    replaced: set[str] = field(default_factory=set)  # paths whose content changed
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def index(
    roots: Sequence[Path],
    spec: BackboneSpec,
    load_engine: Callable[[], Any],
    settings: Settings | None = None,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress | None = None,
    record_roots: bool = True,
    videos: Videos | None = Videos(),  # noqa: B008  (frozen: one shared default is safe)
) -> IndexReport:
    """Bring the catalog of ``spec`` up to date with ``roots``; the model is loaded only if something needs embedding.
    ``record_roots``: remember ``roots`` as folders given to ``p2w index`` (not for the folders a watch looks at).
    ``videos``: how videos are taken as frames (None: videos are neither added nor removed).

    Each batch of new vectors is committed as it is made, so an interruption (Ctrl-C, ``kill -9``) loses at most
    the batch in flight; the next run resumes. A second writer on the same catalog is refused. A first run that
    fails or is interrupted before adding a photo (e.g. the model cannot load) leaves no catalog behind.
    """
    start = time.perf_counter()
    folder = catalog_for(spec, settings)
    absolute = [os.path.abspath(r.expanduser()) for r in roots]
    for root in absolute:
        _check_root(root, folder, spec.id)
    report = IndexReport(folder, spec.id)
    made = [] if folder.parent.is_dir() else [folder.parent]  # P2W_HOME/catalogs, made by this run
    with writer_lock(folder) as lock:
        fresh = not (folder / "catalog.sqlite").is_file()
        catalog = Catalog(folder, spec.id, create=True)
        done = False
        try:
            base = ann_mod.load(catalog, save_rebuilt=False) if catalog.count() else None
            plan = _plan(catalog, absolute, _Scan(exclude, include_hidden, videos), workers, progress)
            _apply(catalog, plan, report, once(load_engine), batch_size, workers, progress, videos)
            finish_ann(catalog, base)
            done = not report.interrupted
            if done and record_roots:
                catalog.record_roots(absolute)
        finally:
            report.total = catalog.count()
            catalog.close()
            if fresh and not done and report.total == 0 and discard_empty(folder):
                lock.discard(*made)  # the lock file, the catalog folder, and the catalogs folder if this run made it
    report.skipped = plan.skipped
    report.unreadable = plan.unreadable
    report.unchanged = plan.unchanged
    report.seconds = time.perf_counter() - start
    return report


def _check_root(root: str, folder: Path, backbone: str) -> None:
    """A root that does not exist is an error; when the catalog still holds photos from it, the error says how to
    drop them (a root that exists but cannot be read is walked, and reported, not refused)."""
    if not gone(root):
        return
    held = 0
    if (folder / "catalog.sqlite").is_file():
        catalog = Catalog(folder, backbone)
        try:
            held = catalog.count_under(root)
        finally:
            catalog.close()
    if held:
        raise P2WError(
            f"not found: {root}; the catalog still holds {held} photos from it: drop them with: p2w forget {root}"
        )
    raise P2WError(f"not found: {root}")


@dataclass(frozen=True)
class _Scan:
    """What a run looks for: ``exclude`` globs, hidden files or not, videos or not (None)."""

    exclude: Sequence[str]
    hidden: bool
    videos: Videos | None

    def unseen(self, path: str) -> bool:
        """Whether ``path`` is outside what this run looks at (a video when videos are off): kept, not removed."""
        return self.videos is None and is_video(path)


def _plan(catalog: Catalog, roots: list[str], look: _Scan, workers: int | None, progress: Progress | None) -> _Plan:
    known = catalog.rows_under(roots)
    skipped = catalog.skipped_under(roots)
    plan = _Plan()
    suffixes = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if look.videos is not None else ())
    found = list(scan([Path(r) for r in roots], look.exclude, look.hidden, plan.unreadable, suffixes))
    seen = {f.path for f in found}
    unknown = Beneath([p for p, _ in plan.unreadable])  # under a folder that could not be listed: not gone
    gone = [p for p in known if p not in seen and not unknown.covers(p) and not look.unseen(p)]
    plan.remove = [(p, known[p].hash) for p in gone]
    plan.unskip = [p for p in skipped if p not in seen and not unknown.covers(p) and not look.unseen(p)]
    fresh = _changed(found, known, skipped, plan)
    paths = [f.path for f in fresh]
    # I/O threads, not decoders: None leaves their number to the digest module
    hashes = sha256_many(paths, progress=progress) if workers is None else sha256_many(paths, workers, progress)
    by_hash = catalog.vectors_by_hash(h for p, h in hashes.items() if h and not is_video(p))
    sources = _move_sources(catalog, plan, roots, [h for p, h in hashes.items() if h and p not in known])
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
            if is_video(f.path):
                plan.videos.append((f, digest))
            elif digest in by_hash:
                moved = not row and bool(sources.get(digest))
                if moved:
                    sources[digest].pop()
                plan.reuse.append((f, digest, by_hash[digest], moved))
            else:
                plan.embed.append((f, digest))
    _read_dates(catalog, roots, seen, plan, progress)
    return plan


def _read_dates(catalog: Catalog, roots: list[str], seen: set[str], plan: _Plan, progress: Progress | None) -> None:
    """The capture time of every file to be written, and of the unchanged ones catalogued before times were kept."""
    files = [f for f, _ in plan.embed] + [f for f, *_ in plan.reuse] + [f for f, _ in plan.videos]
    written = {f.path: f.mtime_ns for f in files} | {p: m for p, _, m in plan.touch}
    undated = {p: m for p, m in catalog.undated_under(roots).items() if p in seen and p not in written}
    wanted = list((written | undated).items())
    plan.dates = capture_times(wanted, progress=progress)
    plan.redate = [(p, plan.dates[p]) for p in undated]


def _changed(
    found: list[Found], known: dict[str, Row], skipped: dict[str, tuple[int, int, str]], plan: _Plan
) -> list[Found]:
    """The files whose size or modification time changed since they were catalogued or skipped (the others are
    counted unchanged, or skipped again for their recorded reason, without being opened)."""
    fresh: list[Found] = []
    for f in found:
        row = known.get(f.path)
        old_skip = skipped.get(f.path)
        if row and (row.size, row.mtime_ns) == (f.size, f.mtime_ns):
            plan.unchanged += 1
        elif old_skip and old_skip[:2] == (f.size, f.mtime_ns):
            plan.skipped.append((f.path, old_skip[2]))
        else:
            fresh.append(f)
    return fresh


def _move_sources(catalog: Catalog, plan: _Plan, roots: list[str], digests: list[str]) -> dict[str, list[str]]:
    """Where new files may have moved from, by content hash: catalogued files gone from disk, under this run's roots
    (``plan.remove``) or anywhere else (a whole indexed folder renamed: those are added to ``plan.remove``)."""
    sources: dict[str, list[str]] = {}
    for path, digest in plan.remove:
        sources.setdefault(digest, []).append(path)
    inside = Beneath(roots)
    for digest, paths in catalog.paths_by_hash(d for d in set(digests) if d not in sources).items():
        for path in paths:
            if not inside.covers(path) and gone(path):
                plan.remove.append((path, digest))
                sources.setdefault(digest, []).append(path)
    return sources


def _apply(
    catalog: Catalog,
    plan: _Plan,
    report: IndexReport,
    load_engine: Callable[[], Any],
    batch_size: int,
    workers: int | None,
    progress: Progress | None,
    videos: Videos | None,
) -> None:
    """Write the plan: touches and reused vectors first, new embeddings batch by batch, then videos one by one,
    removals last."""
    if plan.touch:
        catalog.touch([(p, s, m, plan.dates[p]) for p, s, m in plan.touch])
    if plan.redate:
        catalog.date(plan.redate)
        report.dated = len(plan.redate)
    if plan.reuse:
        rows = [(f.path, f.size, f.mtime_ns, h, *stored, plan.dates[f.path]) for f, h, stored, _ in plan.reuse]
        catalog.put(rows, len(plan.reuse[0][2][0]) // 4)
        report.moved = sum(1 for *_, move in plan.reuse if move)
        report.updated += sum(1 for f, *_ in plan.reuse if f.path in plan.replaced)
        report.added += len(plan.reuse) - report.moved - report.updated
    try:
        if plan.embed:
            _embed(catalog, plan, load_engine, batch_size, workers, progress, report)
        if plan.videos and videos is not None:
            _videos(catalog, plan, load_engine, videos, batch_size, progress, report)
    except KeyboardInterrupt:
        report.interrupted = True  # what is committed stays; the next run resumes
        return
    catalog.remove([p for p, _ in plan.remove])
    catalog.unskip(plan.unskip)
    report.removed = len(plan.remove) - report.moved


def _embed(
    catalog: Catalog,
    plan: _Plan,
    load_engine: Callable[[], Any],
    batch_size: int,
    workers: int | None,
    progress: Progress | None,
    report: IndexReport,
) -> None:
    from p2w.core.features import FileDataset, iter_encoded  # torch: only when something is embedded

    engine = load_engine()
    bb = engine.backbone
    files = [f for f, _ in plan.embed]
    dataset = FileDataset([f.path for f in files], bb.preprocess, draft=bb.draft_size)
    done = 0
    for batch in iter_encoded(bb, dataset, batch_size, workers):
        rows, skips = [], []
        for i, feat, why in batch:
            f, digest = plan.embed[i]
            if feat is None:
                skips.append((f.path, f.size, f.mtime_ns, why))
                plan.skipped.append((f.path, why))
                continue
            norm = feat.norm().clamp_min(1e-12)
            vec = (feat / norm).numpy().astype(np.float32)
            rows.append((f.path, f.size, f.mtime_ns, digest or "", vec.tobytes(), float(norm), plan.dates[f.path]))
        catalog.put(rows, bb.embed_dim)
        if skips:
            catalog.skip(skips)
        report.updated += sum(1 for r in rows if r[0] in plan.replaced)
        report.added += sum(1 for r in rows if r[0] not in plan.replaced)
        done += len(batch)
        if progress:
            progress("embedding", done, len(files))


def _videos(
    catalog: Catalog,
    plan: _Plan,
    engine: Callable[[], Any],
    videos: Videos,
    batch_size: int,
    progress: Progress | None,
    report: IndexReport,
) -> None:
    from p2w.library.videos import embed_videos  # numpy and PyAV: only when a video needs decoding

    stored, skipped = embed_videos(catalog, plan.videos, plan.dates, engine, videos, batch_size, progress)
    plan.skipped += skipped
    report.updated += sum(1 for p in stored if p in plan.replaced)
    report.added += sum(1 for p in stored if p not in plan.replaced)


def once(load: Callable[[], Any]) -> Callable[[], Any]:
    """``load``, called at most once (the photos and the videos of a run, and every batch of a watch, embed with the
    same engine)."""
    held: list[Any] = []

    def engine() -> Any:
        if not held:
            held.append(load())
        return held[0]

    return engine


def finish_ann(catalog: Catalog, base: ann_mod.Ann | None) -> None:
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


def discard_empty(folder: Path) -> bool:
    """Remove the catalog in ``folder`` if it holds no photo (a first run that failed before any was added).

    Call it holding the writer lock, with the catalog closed. A catalog with photos is never touched.
    """
    db = folder / "catalog.sqlite"
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            if con.execute("SELECT count(*) FROM files").fetchone()[0] != 0:
                return False
        for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "catalog.sqlite-journal"):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
    except (sqlite3.Error, OSError):  # unreadable, or still open elsewhere (Windows): leave it
        return False
    return True
