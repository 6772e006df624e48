"""File paths at p2w's boundaries: stored losslessly, shown escaped, written to JSON so that they round-trip.

POSIX paths are bytes. Python hands a name that is not valid UTF-8 (``latin1_caf\\xe9.jpg`` from an old disk or a
camera card) over as a ``str`` holding a surrogate escape (``'caf\\udce9'``), which SQLite, ``json.dumps(...,
ensure_ascii=False)`` and a UTF-8 terminal all refuse. Inside p2w paths stay such strings; here is where they cross:

- ``to_db`` / ``from_db``: the path's exact bytes (``os.fsencode``) in SQLite, a BLOB; rows written as TEXT by an
  older p2w read back too.
- ``shown``: for people (tables, messages): each byte that is not UTF-8 as ``\\xNN``, control characters escaped.
- ``to_json`` / ``from_json``: ``{"path": shown(path)}``, plus ``"path_bytes"`` (the exact bytes, base64) only when
  the name is not valid UTF-8; ``from_json`` gives the exact path back.
- ``raw``: the exact bytes for a pipe (``p2w search --paths``), as ``find`` prints them.

And ``gone``: whether a path is known to be absent, as opposed to unreadable for now.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def to_db(path: str) -> bytes:
    """The path's exact bytes, as SQLite keeps them, e.g. ``to_db('caf\\udce9') == b'caf\\xe9'``."""
    return os.fsencode(path)


def from_db(value: bytes | str) -> str:
    """A stored path back as Python's ``str`` for it (a BLOB, or TEXT written by an older p2w)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def is_exact_text(path: str) -> bool:
    """Whether ``path`` is valid Unicode text (no surrogate escape stands for a byte that is not UTF-8)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` (a path, or a message holding one) for a person: bytes that are not UTF-8 as ``\\xNN``, control
    characters (a newline in a file name) as ``\\n`` or ``\\xNN``; everything else as it is."""
    if not is_exact_text(text):
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def to_json(path: str, key: str = "path") -> dict[str, Any]:
    """``{key: shown(path)}``, with ``key + "_bytes"`` (base64 of the exact bytes) when the path is not valid UTF-8
    or holds control characters, so that ``from_json`` can give it back."""
    out: dict[str, Any] = {key: shown(path)}
    if out[key] != path:
        out[f"{key}_bytes"] = base64.b64encode(os.fsencode(path)).decode("ascii")
    return out


def from_json(record: dict[str, Any], key: str = "path") -> str:
    """The exact path of a record written by ``to_json``."""
    exact = record.get(f"{key}_bytes")
    return os.fsdecode(base64.b64decode(exact)) if exact else str(record[key])


def raw(path: str) -> bytes:
    """The exact bytes of ``path`` (for ``xargs``: a name that is not UTF-8 reaches the next program unchanged)."""
    return os.fsencode(path)


def gone(path: str) -> bool:
    """Whether ``path`` is known to be absent (not merely unreadable: a permission, an I/O error, a slow share)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False
