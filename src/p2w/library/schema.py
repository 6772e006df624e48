"""The catalog's SQLite schema (``SCHEMA_VERSION``) and the stepwise migrations that bring an older catalog to it;
``p2w.library.catalog.Catalog`` applies them in one write transaction."""

from __future__ import annotations

import os
import sqlite3

from p2w.fspath import from_db, gone, to_db

SCHEMA_VERSION = 4
# path: the file's exact bytes (BLOB; TEXT in catalogs made before schema 3, converted by the migration);
# vec: the unit vector (float32 bytes); norm: the image features' length before normalising (NULL in catalogs made
# before schema 2), so features = vec * norm without the image tower (a mapper reads unnormalised features);
# roots: the folders and files given to ``p2w index`` (``p2w status`` names those gone from disk);
# taken: the capture time in wall-clock seconds, taken_offset its offset from UTC in minutes (NULL: not known),
# taken_from "exif" or "mtime" (``p2w.core.dates``); NULL in rows migrated from schema 3, whose taken is their mtime
# until the next ``p2w index`` reads their EXIF (``Catalog.undated_under``); time: NULL for a photo, for a video's
# frame its offset in seconds, the row's path then being the video's bytes, a NUL byte (in no file name) and the time
# (``frame_key``), unique per frame
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path BLOB UNIQUE NOT NULL, size INTEGER, mtime_ns INTEGER,
    hash TEXT NOT NULL, vec BLOB NOT NULL, added REAL, norm REAL, taken INTEGER, taken_offset INTEGER, taken_from TEXT,
    time REAL);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
CREATE INDEX IF NOT EXISTS files_taken ON files (taken);
CREATE TABLE IF NOT EXISTS skipped (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);
CREATE TABLE IF NOT EXISTS roots (path BLOB PRIMARY KEY, indexed REAL);
"""
# stepwise migrations: MIGRATIONS[v] upgrades a catalog of schema v to v + 1
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE files ADD COLUMN norm REAL;",
    2: "UPDATE files SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text';"
    "UPDATE skipped SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text';",
    3: "ALTER TABLE files ADD COLUMN taken INTEGER; ALTER TABLE files ADD COLUMN taken_offset INTEGER;"
    "ALTER TABLE files ADD COLUMN taken_from TEXT; ALTER TABLE files ADD COLUMN time REAL;"
    # the mtime on this machine's clock, as p2w.core.dates.from_mtime gives it: the local time read as UTC
    "UPDATE files SET taken = CAST(strftime('%s', mtime_ns / 1000000000, 'unixepoch', 'localtime') AS INTEGER);",
}


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def statements(script: str) -> list[str]:
    """The statements of a script, to run one at a time inside a transaction (``executescript`` commits first)."""
    return [s.strip() for s in script.split(";") if s.strip()]


# a path at or under a root: the path itself, or its prefix is the root and a separator (exact bytes)
UNDER = "(path = ? OR substr(path, 1, ?) = ?)"
# the rows of one file: a photo's, or a video's frames (its bytes, NUL, the frame's time)
OF = "(path = ? OR (path > ? AND path < ?))"


def frame_key(video: str, at: float) -> bytes:
    """The ``path`` of the row of a video's frame at ``at`` seconds: unique, and no file's."""
    return to_db(video) + b"\0" + f"{at:.3f}".encode()


def of(path: str) -> tuple[bytes, bytes, bytes]:
    """The parameters of ``OF`` for ``path``."""
    key = to_db(path)
    return key, key + b"\0", key + b"\1"


def under(root: str) -> tuple[bytes, int, bytes]:
    """The parameters of ``UNDER`` for ``root``."""
    prefix = to_db(root.rstrip(os.sep) + os.sep)
    return to_db(root), len(prefix), prefix


def gone_roots(con: sqlite3.Connection) -> list[tuple[str, int]]:
    """``Catalog.gone_roots`` on any connection to a catalog (``p2w status`` reads one read-only)."""
    if not has_table(con, "roots"):
        return []  # made before schema 3
    roots = sorted(from_db(r[0]) for r in con.execute("SELECT path FROM roots"))
    query = "SELECT count(*) FROM files WHERE " + UNDER
    counts = [(r, int(con.execute(query, under(r)).fetchone()[0])) for r in roots if gone(r)]
    return [(r, n) for r, n in counts if n]


def count_files(con: sqlite3.Connection) -> tuple[int, int]:
    """Files and videos of a catalog (one opened read-only may be of an older schema, without frames)."""
    if "time" not in {r[1] for r in con.execute("PRAGMA table_info(files)")}:
        return int(con.execute("SELECT count(*) FROM files").fetchone()[0]), 0
    photos = int(con.execute("SELECT count(*) FROM files WHERE time IS NULL").fetchone()[0])
    sql = "SELECT count(DISTINCT substr(path, 1, instr(path, x'00') - 1)) FROM files WHERE time IS NOT NULL"
    videos = int(con.execute(sql).fetchone()[0])
    return photos + videos, videos
