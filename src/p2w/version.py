"""p2w's version, from the installed package's metadata (``0.0.0+unknown`` in a source tree): ``version()``, or
``p2w.version.__version__``. Read on first use, not at import: the lookup imports ``importlib.metadata`` and scans the
installed distributions, 14-48 ms of every command's start (the warm ``p2w search`` never needs it)."""

from __future__ import annotations

from functools import cache


@cache
def version() -> str:
    """The installed package's version."""
    from importlib import metadata

    try:
        return metadata.version("p2w")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'p2w.version' has no attribute {name!r}")
