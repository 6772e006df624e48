"""The one error family of p2w: every expected failure is a `P2WError` whose message names the remedy."""

from __future__ import annotations


class P2WError(Exception):
    """Base class of every error p2w raises on purpose; its message is one line meant for the user."""

    exit_code = 1


class ModelUnavailableError(P2WError):
    """Backbone weights are neither local nor downloadable (offline, unknown tag, missing file)."""


class ModelLoadError(P2WError):
    """A backbone config or weights file exists but cannot be used (bad JSON, wrong keys, unsupported model)."""


class MapperError(P2WError):
    """A mapper file is missing, unreadable, or does not fit the backbone it is used with."""


class PromptError(P2WError):
    """A prompt template or query text cannot express the requested query (e.g. no standalone `*`)."""


class ImageError(P2WError):
    """An image file cannot be opened or decoded."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (or a decompression bomb): refused before it is decoded."""


class DeviceError(P2WError):
    """The requested device or precision is not available on this machine."""


class TrainingInterrupted(P2WError):
    """Ctrl-C during training: a checkpoint was written and the run can be resumed."""

    exit_code = 130


def summary(exc: BaseException | None) -> str:
    """An exception's first line for a one-line message, e.g. ``summary(OSError("disk full\n..."))`` -> ``"disk full"``;
    its type name when it has no text."""
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
