"""The one progress protocol of p2w: a long step reports ``progress(stage, done, total)``, e.g.
``progress("hashing", 200, 1000)`` or ``progress("downloading", bytes_done, bytes_total)`` (``total`` 0: unknown).
Library code only calls it; the CLI draws it (``p2w.cli.render``)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
