"""What ``p2w serve`` refuses, each with the HTTP status it answers with."""

from __future__ import annotations

from p2w.errors import P2WError


class ServeError(P2WError):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class NotFound(ServeError):
    """No such photo (or not one the server may show)."""

    status = 404


class TooLarge(ServeError):
    """An upload over the byte or pixel limit."""

    status = 413


class Unsupported(ServeError):
    """An upload that is not an image p2w can read."""

    status = 415


class Unavailable(ServeError):
    """What the request needs is not set up yet (no catalog, no mapper)."""

    status = 409
