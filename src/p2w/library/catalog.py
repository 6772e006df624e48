"""The photo catalog of one backbone: SQLite (WAL) is the truth — path, size, mtime, content hash, vector.

One catalog per backbone, so vectors of different models never mix. The hnswlib index beside it is derived
(see ``p2w.ann``) and rebuilt whenever its recorded generation differs from the catalog's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2w.errors import P2WError
from p2w.settings import Settings
from p2w.spec import BackboneSpec, safe_name

SCHEMA_VERSION = 2
# vec: the unit vector (float32 bytes); norm: the image features' length before normalising (NULL in catalogs made
# before schema 2), so features = vec * norm without the image tower (a mapper reads unnormalised features)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER, mtime_ns INTEGER,
    hash TEXT NOT NULL, vec BLOB NOT NULL, added REAL, norm REAL);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);
"""
# stepwise migrations: MIGRATIONS[v] upgrades a catalog of schema v to v + 1
MIGRATIONS: dict[int, str] = {1: "ALTER TABLE files ADD COLUMN norm REAL;"}
Stored = tuple[bytes, float | None]  # a unit vector's float32 bytes and the features' norm (None: unknown)


@dataclass(frozen=True)
class Row:
    """A catalogued file."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 = best), cosine score, the file and its catalog id."""

    rank: int
    score: float
    path: str
    size: int
    mtime: float
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``p2w search --json`` form: ``{"rank", "score", "path"}``."""
        return {"rank": self.rank, "score": self.score, "path": self.path}


def catalog_dir(home: Path, backbone_id: str) -> Path:
    """``P2W_HOME/catalogs/<backbone id, made a folder name>``."""
    return home / "catalogs" / safe_name(backbone_id)


def catalog_for(spec: BackboneSpec, settings: Settings | None = None) -> Path:
    """The catalog folder of a backbone."""
    return catalog_dir((settings or Settings.from_env()).home, spec.id)


class Catalog:
    """Open (or create) the catalog in ``folder``, e.g. ``Catalog(catalog_dir(home, "ViT-L-14/openai"))``."""

    def __init__(self, folder: Path, backbone_id: str, dim: int | None = None, create: bool = False) -> None:
        self.folder = folder
        self.db_path = folder / "catalog.sqlite"
        if not create and not self.db_path.is_file():
            raise P2WError(f"no catalog for {backbone_id} in {folder.parent}; build one with: p2w index DIR")
        folder.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)  # explicit transactions
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self._init_schema(backbone_id, dim)

    def _init_schema(self, backbone_id: str, dim: int | None) -> None:
        self.con.executescript(_SCHEMA)
        meta = self.meta()
        if not meta:
            with self.transaction():
                self._set_meta(
                    schema=SCHEMA_VERSION, backbone=backbone_id, dim=dim or 0, generation=0, created=time.time()
                )
            return
        if meta.get("backbone") != backbone_id:
            raise P2WError(f"catalog {self.folder} belongs to {meta.get('backbone')}, not {backbone_id}")
        version = int(meta.get("schema", 0))
        if version > SCHEMA_VERSION:
            raise P2WError(f"catalog {self.folder} was written by a newer p2w (schema {version}); upgrade p2w")
        while version < SCHEMA_VERSION:
            with self.transaction() as con:  # executescript would commit first: one statement at a time
                for statement in filter(None, (s.strip() for s in MIGRATIONS[version].split(";"))):
                    con.execute(statement)
                version += 1
                self._set_meta(schema=version)

    # ---- meta ---------------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """All meta entries as strings."""
        return dict(self.con.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, **values: object) -> None:
        self.con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])

    @property
    def backbone(self) -> str:
        """The backbone id this catalog belongs to."""
        return self.meta()["backbone"]

    @property
    def dim(self) -> int:
        """Vector width (0 until the first vector is stored)."""
        return int(self.meta().get("dim", 0))

    @property
    def generation(self) -> int:
        """Counter bumped by every committed change: the ANN file records the one it was built from."""
        return int(self.meta().get("generation", 0))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _bump(self) -> None:
        self.con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # ---- files --------------------------------------------------------------------------------------------------
    def rows_under(self, roots: Sequence[str]) -> dict[str, Row]:
        """Catalogued files at or under the given absolute paths."""
        out: dict[str, Row] = {}
        for root in roots:
            prefix = root.rstrip(os.sep) + os.sep
            query = "SELECT id, path, size, mtime_ns, hash FROM files WHERE path = ? OR substr(path, 1, ?) = ?"
            for r in self.con.execute(query, (root, len(prefix), prefix)):
                out[r[1]] = Row(*r)
        return out

    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, Stored]:
        """A stored vector (and norm) for each known content hash (copies and moves reuse it)."""
        out: dict[str, Stored] = {}
        for h in set(hashes):
            hit = self.con.execute("SELECT vec, norm FROM files WHERE hash = ? LIMIT 1", (h,)).fetchone()
            if hit:
                out[h] = (hit[0], hit[1])
        return out

    def put(self, rows: Sequence[tuple[str, int, int, str, bytes, float | None]], dim: int) -> None:
        """Insert or replace (path, size, mtime_ns, hash, vector bytes, norm) rows in one transaction.

        A replaced path gets a new id, so the ANN sees a removal and an addition.
        """
        if not rows:
            return
        with self.transaction() as con:
            con.executemany("DELETE FROM files WHERE path = ?", [(r[0],) for r in rows])
            now = time.time()
            con.executemany(
                "INSERT INTO files (path, size, mtime_ns, hash, vec, norm, added) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*r, now) for r in rows],
            )
            con.executemany("DELETE FROM skipped WHERE path = ?", [(r[0],) for r in rows])
            if not self.dim:
                self._set_meta(dim=dim)
            self._bump()

    def touch(self, rows: Sequence[tuple[str, int, int]]) -> None:
        """Record a new size/mtime for files whose content did not change (no new vector, no ANN change)."""
        with self.transaction() as con:
            con.executemany("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", [(s, m, p) for p, s, m in rows])

    def remove(self, paths: Sequence[str]) -> None:
        """Forget files (deleted from disk)."""
        if not paths:
            return
        with self.transaction() as con:
            con.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            con.executemany("DELETE FROM skipped WHERE path = ?", [(p,) for p in paths])
            self._bump()

    def skip(self, rows: Sequence[tuple[str, int, int, str]]) -> None:
        """Remember (path, size, mtime_ns, reason) of unusable files, so unchanged ones are not retried."""
        with self.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", rows)

    def skipped_under(self, roots: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """Skipped files at or under the roots: path -> (size, mtime_ns, reason)."""
        out = {}
        for root in roots:
            prefix = root.rstrip(os.sep) + os.sep
            query = "SELECT path, size, mtime_ns, reason FROM skipped WHERE path = ? OR substr(path, 1, ?) = ?"
            for p, size, mtime, reason in self.con.execute(query, (root, len(prefix), prefix)):
                out[p] = (size, mtime, reason)
        return out

    def all_vectors(self) -> Iterator[tuple[int, bytes]]:
        """(id, vector bytes) of every file, for building the ANN."""
        yield from self.con.execute("SELECT id, vec FROM files")

    def vectors_for(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Vectors of the given ids."""
        return {
            r[0]: r[1]
            for part in _parts(ids)
            for r in self.con.execute(f"SELECT id, vec FROM files WHERE id IN ({_marks(part)})", part)
        }

    def norms_for(self, ids: Sequence[int]) -> dict[int, float]:
        """The features' norm of each id that has one (catalogs made before schema 2 have none)."""
        out: dict[int, float] = {}
        for part in _parts(ids):
            sql = f"SELECT id, norm FROM files WHERE norm IS NOT NULL AND id IN ({_marks(part)})"
            out.update((int(i), float(n)) for i, n in self.con.execute(sql, part))
        return out

    def ids_under(self, folder: str) -> list[int]:
        """Ids of files under a folder (``--in DIR``)."""
        prefix = folder.rstrip(os.sep) + os.sep
        return [
            r[0] for r in self.con.execute("SELECT id FROM files WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        ]

    def rows_for(self, ids: Sequence[int]) -> dict[int, Row]:
        """Rows of the given ids."""
        return {
            r[0]: Row(*r)
            for part in _parts(ids)
            for r in self.con.execute(
                f"SELECT id, path, size, mtime_ns, hash FROM files WHERE id IN ({_marks(part)})", part
            )
        }

    def ids(self) -> list[int]:
        """Every file id (the ANN's labels)."""
        return [r[0] for r in self.con.execute("SELECT id FROM files")]

    def count(self) -> int:
        """Number of catalogued files."""
        return int(self.con.execute("SELECT count(*) FROM files").fetchone()[0])

    def is_empty(self) -> bool:
        """Whether no file is catalogued (without counting them all: a resident server asks at every query)."""
        return self.con.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def close(self) -> None:
        """Close the database."""
        self.con.close()


def _parts(ids: Sequence[int], size: int = 900) -> list[list[int]]:
    """Slices under SQLite's oldest limit on bound parameters (999)."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids)) or "NULL"


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
