"""p2w's version, from the installed package's metadata (``0.0.0+unknown`` in a source tree)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("p2w")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
