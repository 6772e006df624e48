"""The photo catalog of one backbone: SQLite (WAL) is the truth — path, size, mtime, content hash, vector.

One catalog per backbone, so vectors of different models never mix. The hnswlib index beside it is derived
(see ``p2w.library.ann``) and rebuilt whenever its recorded generation differs from the catalog's.

Paths are stored as their exact bytes (``p2w.fspath.to_db``; a file name need not be UTF-8), and the folders given to
``p2w index`` as the catalog's roots. The schema is created and migrated inside one ``BEGIN IMMEDIATE`` transaction
that reads the version again, so processes opening a catalog at once never migrate it twice.
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

from p2w.core.dates import Taken, Where, from_mtime
from p2w.core.gallery import Hit
from p2w.errors import P2WError
from p2w.fspath import from_db, gone, to_db
from p2w.library.schema import (
    MIGRATIONS,
    OF,
    SCHEMA,
    SCHEMA_VERSION,
    UNDER,
    frame_key,
    gone_roots,
    has_table,
    of,
    statements,
    under,
)
from p2w.settings import Settings
from p2w.spec import BackboneSpec, safe_name

__all__ = ["SCHEMA_VERSION", "Catalog", "Hit", "Row", "catalog_dir", "catalog_for"]

Stored = tuple[bytes, float | None]  # a unit vector's float32 bytes and the features' norm (None: unknown)
# a file to store: path, size, mtime_ns, content hash, unit vector bytes, norm, capture time
NewRow = tuple[str, int, int, str, bytes, float | None, Taken]


@dataclass(frozen=True)
class Row:
    """A catalogued file."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    taken: Taken | None = None  # None: the row's time is not known (never once the catalog is schema 4)
    time: float | None = None  # a video's frame: its offset in seconds (``path`` is the video's)


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
        try:
            if self.con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # set once: it needs the file alone
                self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self._init_schema(backbone_id, dim)
        except BaseException:
            self.con.close()
            raise

    def _init_schema(self, backbone_id: str, dim: int | None) -> None:
        """Create or migrate in one write transaction that reads the version again inside it: a second process
        opening the catalog at the same moment waits, then finds the work done."""
        meta = self.meta() if has_table(self.con, "meta") else {}
        if meta and int(meta.get("schema", 0)) == SCHEMA_VERSION:
            self._check(meta, backbone_id)
            return
        with self.transaction() as con:
            meta = self.meta() if has_table(self.con, "meta") else {}
            if not meta:
                for statement in statements(SCHEMA):
                    con.execute(statement)
                self._set_meta(
                    schema=SCHEMA_VERSION, backbone=backbone_id, dim=dim or 0, generation=0, created=time.time()
                )
                return
            self._check(meta, backbone_id)
            version = int(meta.get("schema", 0))
            while version < SCHEMA_VERSION:
                for statement in statements(MIGRATIONS[version]):
                    con.execute(statement)
                version += 1
            for statement in statements(SCHEMA):  # tables a newer schema added (CREATE ... IF NOT EXISTS)
                con.execute(statement)
            self._set_meta(schema=version)

    def _check(self, meta: dict[str, str], backbone_id: str) -> None:
        if meta.get("backbone") != backbone_id:
            raise P2WError(f"catalog {self.folder} belongs to {meta.get('backbone')}, not {backbone_id}")
        version = int(meta.get("schema", 0))
        if version > SCHEMA_VERSION:
            raise P2WError(f"catalog {self.folder} was written by a newer p2w (schema {version}); upgrade p2w")

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

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Catalog]:
        """Reads that see one state of the catalog (a read transaction: WAL keeps it while writers commit), e.g. the
        row count, the vectors and the generation an index is built from."""
        self.con.execute("BEGIN")
        try:
            yield self
        finally:
            self.con.execute("COMMIT")

    def _bump(self) -> None:
        self.con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # ---- files --------------------------------------------------------------------------------------------------
    def rows_under(self, roots: Sequence[str]) -> dict[str, Row]:
        """Catalogued files at or under the given absolute paths."""
        query = f"SELECT {_ROW} FROM files WHERE " + UNDER
        return {row.path: row for root in roots for row in map(_row, self.con.execute(query, under(root)))}

    def count_under(self, root: str) -> int:
        """Number of catalogued files at or under ``root``."""
        return int(self.con.execute("SELECT count(*) FROM files WHERE " + UNDER, under(root)).fetchone()[0])

    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, Stored]:
        """A stored vector (and norm) for each known content hash of a photo (copies and moves reuse it)."""
        out: dict[str, Stored] = {}
        for h in set(hashes):
            sql = "SELECT vec, norm FROM files WHERE hash = ? AND time IS NULL LIMIT 1"
            hit = self.con.execute(sql, (h,)).fetchone()
            if hit:
                out[h] = (hit[0], hit[1])
        return out

    def paths_by_hash(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """The catalogued paths of each content hash of a photo (where a moved file came from)."""
        out: dict[str, list[str]] = {}
        for h in set(hashes):
            sql = "SELECT path FROM files WHERE hash = ? AND time IS NULL"
            found = [from_db(r[0]) for r in self.con.execute(sql, (h,))]
            if found:
                out[h] = found
        return out

    def put(self, rows: Sequence[NewRow], dim: int) -> None:
        """Insert or replace (path, size, mtime_ns, hash, vector bytes, norm, capture time) rows in one transaction.

        A replaced path gets a new id, so the ANN sees a removal and an addition.
        """
        if not rows:
            return
        paths = [(to_db(r[0]),) for r in rows]
        with self.transaction() as con:
            con.executemany("DELETE FROM files WHERE path = ?", paths)
            now = time.time()
            con.executemany(
                "INSERT INTO files (path, size, mtime_ns, hash, vec, norm, added, taken, taken_offset, taken_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(to_db(r[0]), *r[1:6], now, r[6].seconds, r[6].offset, r[6].source) for r in rows],
            )
            con.executemany("DELETE FROM skipped WHERE path = ?", paths)
            if not self.dim:
                self._set_meta(dim=dim)
            self._bump()

    def put_frames(
        self, video: str, facts: tuple[int, int, str, Taken], frames: Sequence[tuple[float, bytes, float]], dim: int
    ) -> None:
        """Replace the rows of ``video`` by its ``frames`` (time, vector bytes, norm), all with the video's facts
        (size, mtime_ns, content hash, capture time), in one transaction."""
        size, mtime_ns, digest, taken = facts
        with self.transaction() as con:
            con.execute("DELETE FROM files WHERE " + OF, of(video))
            now = time.time()
            con.executemany(
                "INSERT INTO files (path, size, mtime_ns, hash, vec, norm, added, taken, taken_offset, taken_from, "
                "time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(frame_key(video, t), size, mtime_ns, digest, vec, norm, now, taken.seconds, taken.offset,
                  taken.source, t) for t, vec, norm in frames],
            )  # fmt: skip
            con.execute("DELETE FROM skipped WHERE path = ?", (to_db(video),))
            if not self.dim:
                self._set_meta(dim=dim)
            self._bump()

    def touch(self, rows: Sequence[tuple[str, int, int, Taken]]) -> None:
        """Record a new size, mtime and capture time for files whose content did not change (no new vector, no ANN
        change); a video's frames all of them."""
        sql = "UPDATE files SET size = ?, mtime_ns = ?, taken = ?, taken_offset = ?, taken_from = ? WHERE " + OF
        with self.transaction() as con:
            con.executemany(sql, [(s, m, t.seconds, t.offset, t.source, *of(p)) for p, s, m, t in rows])

    def date(self, rows: Sequence[tuple[str, Taken]]) -> None:
        """Record the capture time of catalogued files (those ``undated_under`` lists)."""
        sql = "UPDATE files SET taken = ?, taken_offset = ?, taken_from = ? WHERE path = ?"
        with self.transaction() as con:
            con.executemany(sql, [(t.seconds, t.offset, t.source, to_db(p)) for p, t in rows])

    def undated_under(self, roots: Sequence[str]) -> dict[str, int]:
        """Catalogued files at or under the roots whose EXIF was never read (a catalog migrated from schema 3):
        path -> mtime_ns."""
        query = "SELECT path, mtime_ns FROM files WHERE taken_from IS NULL AND time IS NULL AND " + UNDER
        return {from_db(p): m for root in roots for p, m in self.con.execute(query, under(root))}

    def remove(self, paths: Sequence[str]) -> None:
        """Forget files (deleted from disk), a video's frames with it."""
        if not paths:
            return
        keys = [(to_db(p),) for p in paths]
        with self.transaction() as con:
            con.executemany("DELETE FROM files WHERE " + OF, [of(p) for p in paths])
            con.executemany("DELETE FROM skipped WHERE path = ?", keys)
            self._bump()

    def forget_under(self, root: str) -> int:
        """Forget every file, skipped file and root at or under ``root``; returns how many files were forgotten."""
        with self.transaction() as con:
            gone = con.execute("DELETE FROM files WHERE " + UNDER, under(root)).rowcount
            con.execute("DELETE FROM skipped WHERE " + UNDER, under(root))
            con.execute("DELETE FROM roots WHERE " + UNDER, under(root))
            if gone:
                self._bump()
        return int(gone)

    def skip(self, rows: Sequence[tuple[str, int, int, str]]) -> None:
        """Remember (path, size, mtime_ns, reason) of unusable files, so unchanged ones are not retried."""
        with self.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", [(to_db(r[0]), *r[1:]) for r in rows])

    def unskip(self, paths: Sequence[str]) -> None:
        """Forget skipped files that are gone from disk."""
        if paths:
            with self.transaction() as con:
                con.executemany("DELETE FROM skipped WHERE path = ?", [(to_db(p),) for p in paths])

    def skipped_under(self, roots: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """Skipped files at or under the roots: path -> (size, mtime_ns, reason)."""
        query = "SELECT path, size, mtime_ns, reason FROM skipped WHERE " + UNDER
        return {
            from_db(p): (size, mtime, reason)
            for root in roots
            for p, size, mtime, reason in self.con.execute(query, under(root))
        }

    # ---- roots --------------------------------------------------------------------------------------------------
    def record_roots(self, roots: Sequence[str]) -> None:
        """Record the folders (or files) ``p2w index`` was given; forget the records of roots gone from disk that
        hold no photo any more (a folder moved away and indexed under its new name)."""
        with self.transaction() as con:
            now = time.time()
            con.executemany("INSERT OR REPLACE INTO roots VALUES (?, ?)", [(to_db(r), now) for r in roots])
            empty = [(to_db(r),) for r in self.roots() if gone(r) and not self.count_under(r)]
            con.executemany("DELETE FROM roots WHERE path = ?", empty)

    def roots(self) -> list[str]:
        """The recorded roots, sorted."""
        return sorted(from_db(r[0]) for r in self.con.execute("SELECT path FROM roots"))

    def gone_roots(self) -> list[tuple[str, int]]:
        """Recorded roots gone from disk under which the catalog still holds photos, with their number."""
        return gone_roots(self.con)

    # ---- vectors and rows by id ---------------------------------------------------------------------------------
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

    def ids_where(self, where: Where, photos: bool = False) -> list[int]:
        """Ids of the files that pass ``where``: under its folder (a range of the path index: the paths that start
        with the folder and a separator), taken in its date range (the ``taken`` index); ``photos``: no video's
        frames."""
        clauses: list[str] = ["time IS NULL"] if photos else []
        values: list[object] = []
        if where.within is not None:
            prefix = to_db(where.within.rstrip(os.sep) + os.sep)
            clauses.append("path >= ? AND path < ?")
            values += [prefix, prefix[:-1] + bytes([prefix[-1] + 1])]
        if where.after is not None:
            clauses.append("taken >= ?")
            values.append(where.after)
        if where.before is not None:
            clauses.append("taken < ?")
            values.append(where.before)
        query = "SELECT id FROM files" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return [r[0] for r in self.con.execute(query, values)]

    def rows_for(self, ids: Sequence[int]) -> dict[int, Row]:
        """Rows of the given ids."""
        query = f"SELECT {_ROW} FROM files WHERE id IN ({{}})"
        return {
            row.id: row for part in _parts(ids) for row in map(_row, self.con.execute(query.format(_marks(part)), part))
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


_ROW = "id, path, size, mtime_ns, hash, taken, taken_offset, taken_from, time"  # the columns of a Row


def _row(r: tuple[Any, ...]) -> Row:
    taken = Taken(r[5], r[6], r[7]) if r[7] is not None else from_mtime(r[3]) if r[3] is not None else None
    path = from_db(r[1] if r[8] is None else bytes(r[1]).split(b"\0", 1)[0])
    return Row(r[0], path, r[2], r[3], r[4], taken, r[8])


def _parts(ids: Sequence[int], size: int = 900) -> list[list[int]]:
    """Slices under SQLite's oldest limit on bound parameters (999)."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids)) or "NULL"
