"""The ``p2w`` command line: each command parses, calls one library function, and renders. No policy lives here.

``app`` is the Typer application; importing this package registers every command on it.
"""

from p2w.cli import demo, duplicates, embed, eval, mapper, photos, serve, train  # noqa: F401  (each module registers its commands)
from p2w.cli.root import app, main

__all__ = ["app", "main"]
