"""Which mapper a query uses when none is named: the backbone's default, the one shipped with a builtin backbone, or
(only when allowed) the known published one, downloaded and made the default. The CLI and ``p2w.load`` both ask here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

from p2w.errors import MapperError
from p2w.mappers.registry import (
    builtin_mapper_for,
    default_for,
    known_for,
    missing_mapper_hint,
    registry_file,
    set_default,
)
from p2w.settings import Settings

DEFAULT = "default"  # p2w.load(mapper="default"): the backbone's default mapper, when it has one


@overload
def default_mapper(
    backbone: str,
    settings: Settings,
    download: bool = ...,
    notify: Callable[[str], object] | None = ...,
    required: Literal[True] = ...,
) -> str: ...
@overload
def default_mapper(
    backbone: str,
    settings: Settings,
    download: bool = ...,
    notify: Callable[[str], object] | None = ...,
    required: bool = ...,
) -> str | None: ...
def default_mapper(
    backbone: str,
    settings: Settings,
    download: bool = False,
    notify: Callable[[str], object] | None = None,
    required: bool = True,
) -> str | None:
    """The mapper (a registered name or a file) of backbone id ``backbone`` when none was named: its default, else the
    one shipped with a builtin backbone, else — only with ``download`` — the known published one (fetched if needed,
    then made the default). None found: an error naming the command to run, or None when not ``required``."""
    name = default_for(backbone, settings) or builtin_mapper_for(backbone)
    if name:
        return name
    known = known_for(backbone)
    if not (download and known):
        if required:
            raise MapperError(missing_mapper_hint(backbone))
        return None
    if not registry_file(settings.mappers_dir, known.name).is_file():
        from p2w.mappers.download import download as fetch  # torch, and only when a download is asked for

        if notify:
            notify(f"downloading the mapper {known.name} for {backbone} (--download)")
        fetch(known.name, settings)
    set_default(known.name, settings)
    return known.name
