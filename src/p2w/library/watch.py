"""``watch``: keep a catalog current with its folders while it runs (``p2w index DIR --watch``).

A full ``index`` run first; then, for every debounced batch of file-system events (watchfiles), an ``index`` run over
just the folders the events touched (the nearest folder of each that still exists, inside the roots): photos that
appeared, changed, moved or disappeared are applied as ``p2w index`` applies them, under its writer lock, so a
running ``p2w serve`` sees them at its next query. What cannot be listed keeps its rows, and so does a root that goes
away (an unmounted drive): its rows stay until ``p2w forget``. A batch that finds another writer at work waits and is
tried again with the next one. The model is loaded once, at the first photo to embed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2w.errors import P2WError
from p2w.fspath import gone
from p2w.library.index import IndexReport, index, once
from p2w.progress import Progress
from p2w.settings import Settings
from p2w.spec import BackboneSpec

log = logging.getLogger(__name__)

DEBOUNCE_MS = 800  # events are gathered this long after the last one before a batch is applied
RETRY_S = 2.0  # a batch that found another writer waits this long before it is tried again


@dataclass
class Batch:
    """One applied batch: the folders it looked at, and what ``index`` did there (None: not applied, ``problem``
    says why; its folders are tried again with the next batch)."""

    folders: list[str]
    report: IndexReport | None
    problem: str | None = None
    gone: list[str] = field(default_factory=list)  # roots that went away: their photos are kept


def watch(
    roots: Sequence[Path],
    spec: BackboneSpec,
    load_engine: Callable[[], Any],
    on_batch: Callable[[Batch], object],
    settings: Settings | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    debounce_ms: int = DEBOUNCE_MS,
    **options: Any,
) -> None:
    """Index ``roots`` now, then follow them until ``stop`` is set (or Ctrl-C: ``KeyboardInterrupt`` propagates,
    after the batch in flight committed what it had); ``on_batch`` hears of every batch, the first (full) one
    included. ``options``: ``index``'s (``exclude``, ``include_hidden``, ``batch_size``, ``workers``)."""
    import watchfiles

    absolute = [os.path.abspath(r.expanduser()) for r in roots]
    engine = once(load_engine)
    first = index(roots, spec, engine, settings, progress=progress, **options)
    on_batch(Batch(absolute, first))
    if first.interrupted:
        raise KeyboardInterrupt
    pending: set[str] = set()
    events = watchfiles.watch(
        *absolute, debounce=debounce_ms, stop_event=stop, yield_on_timeout=True, rust_timeout=int(RETRY_S * 1000),
        ignore_permission_denied=True,
    )  # fmt: skip
    for changes in events:
        pending |= set(folders_of((path for _, path in changes), absolute))
        if not pending:
            continue
        batch = _apply(sorted(pending), absolute, spec, engine, settings, options)
        if batch.report is not None or not batch.folders:
            pending.clear()
        on_batch(batch)
        if batch.report is not None and batch.report.interrupted:  # Ctrl-C while it embedded: what it made is kept
            raise KeyboardInterrupt


def _apply(
    folders: list[str],
    roots: list[str],
    spec: BackboneSpec,
    engine: Callable[[], Any],
    settings: Settings | None,
    options: dict[str, Any],
) -> Batch:
    """One ``index`` run over ``folders`` (roots that went away are left out: their photos stay)."""
    away = [r for r in roots if gone(r)]
    here = [f for f in folders if not gone(f)]
    if not here:
        return Batch([], None, gone=away)
    try:
        report = index([Path(f) for f in here], spec, engine, settings, record_roots=False, **options)
    except P2WError as exc:  # another p2w index holds the catalog: try these folders again with the next batch
        log.info("watch: %s", exc)
        return Batch(here, None, str(exc), away)
    return Batch(here, report, gone=away)


def folders_of(paths: Iterable[str], roots: Sequence[str]) -> list[str]:
    """The folders an index run must look at for changes at ``paths``: for each, the nearest one at or above it
    that still exists, inside the root it belongs to (a deleted folder: its parent; a new one: itself); none of
    them under another."""
    found: set[str] = set()
    for path in paths:
        root = next((r for r in roots if path == r or path.startswith(r.rstrip(os.sep) + os.sep)), None)
        if root is None:
            continue
        folder = path
        while folder != root and (gone(folder) or not os.path.isdir(folder)):
            folder = os.path.dirname(folder)
        found.add(folder)
    return _outermost(found)


def _outermost(folders: Iterable[str]) -> list[str]:
    kept: list[str] = []
    for folder in sorted(folders):
        if not any(folder == k or folder.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(folder)
    return kept
