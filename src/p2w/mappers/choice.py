"""Which mapper and which prompt a query uses: the one rule that ``p2w.load``, the CLI, ``p2w serve`` and ``p2w eval``
all ask, so that a search, a server and a benchmark given the same options use the same mapper and template.

- ``choose_mapper(given, backbone)``: a registered name, a shipped mapper, a file, or (given nothing) the backbone's
  default; only with ``download=True`` the known published one is fetched.
- ``query_template(method, prompt, benchmark)``: the template of a pic2word-mode query.
- ``plan_query(...)``: a query's mode and template, and the mapper it needs, resolved before any model loads
  (without a mapper, an image-and-words query is composed by ``AUTO_FUSION``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2w.core.compose import MAPPED, QueryPlan, choose_mode, plan
from p2w.errors import MapperError
from p2w.mappers.methods import METHODS, Method
from p2w.mappers.registry import (
    builtin_mapper_for,
    default_for,
    file_method,
    known_for,
    mapper_label,
    mapper_path,
    missing_mapper_hint,
    registered,
    registry_file,
    set_default,
)
from p2w.settings import Settings

DEFAULT = "default"  # p2w.load(mapper="default"): the backbone's default mapper, when it has one
AUTO_FUSION = "slerp"  # an image-and-words query with no mode, on a backbone without a mapper


@dataclass(frozen=True)
class MapperChoice:
    """A mapper file chosen for a query: where it is, what it is called, and its method when the file says
    (a p2w safetensors file does; another file's method is known once it is read)."""

    path: Path
    name: str
    method: Method | None

    @property
    def prompt(self) -> str:
        """The template its queries use when given no prompt."""
        return query_template(self.method)


def choose_mapper(
    given: str | Path | None,
    backbone: str,
    settings: Settings,
    download: bool = False,
    notify: Callable[[str], object] | None = None,
    required: bool = True,
) -> MapperChoice | None:
    """The mapper a query of backbone id ``backbone`` uses, e.g. ``choose_mapper(None, "ViT-L-14/openai", settings)``.

    ``given``: a registered name (it wins over a file of the same name in the working folder: write ``./NAME`` for
    that), a mapper shipped with p2w, or a file; None or ``"default"``: the backbone's default (``p2w mapper
    default``), else the one shipped with a builtin backbone, else — only with ``download`` — the known published
    one, fetched and made the default. None found: an error naming the command to run, or None when not
    ``required``. Reads file headers only (no torch, no tensor).
    """
    if given is not None and str(given) != DEFAULT:
        path = mapper_path(str(given), settings.mappers_dir)
    else:
        found = _default_path(backbone, settings, download, notify)
        if found is None:
            if required:
                raise MapperError(missing_mapper_hint(backbone))
            return None
        path = found
    return MapperChoice(path, mapper_label(path), file_method(path))


def _default_path(
    backbone: str, settings: Settings, download: bool, notify: Callable[[str], object] | None
) -> Path | None:
    name = default_for(backbone, settings) or builtin_mapper_for(backbone)
    if name:
        return mapper_path(name, settings.mappers_dir)
    known = known_for(backbone)
    if not (download and known):
        return None
    if not registry_file(settings.mappers_dir, known.name).is_file():
        from p2w.mappers.download import download as fetch  # torch, and only when a download is asked for

        if notify:
            notify(f"downloading the mapper {known.name} for {backbone} (--download)")
        fetch(known.name, settings)
    set_default(known.name, settings)
    return registry_file(settings.mappers_dir, known.name)


def has_mapper(backbone: str, settings: Settings) -> bool:
    """Whether any mapper exists for ``backbone``: registered, shipped with p2w, or known to download."""
    if known_for(backbone) or builtin_mapper_for(backbone):
        return True
    return any(r.backbone == backbone for r in registered(settings))


def query_template(
    method: Method | None, prompt: str | None = None, benchmark: str | None = None, own: str | None = None
) -> str:
    """The template of a pic2word-mode query: ``prompt`` when given; on a ``benchmark``, the template the method's
    authors evaluate it with, else the benchmark's ``own``; elsewhere the method's default prompt. Without a method
    (no mapper, or a file that does not say), Pic2Word's: ``a photo of * , {text}``."""
    if prompt is not None:
        return prompt
    method = method or METHODS["pic2word"]
    if benchmark is not None:
        return method.eval_prompts.get(benchmark, own or method.prompt)
    return method.prompt


def plan_query(
    mode: str | None,
    images: int,
    has_text: bool,
    prompt: str | None,
    mapper: str | None,
    backbone: str,
    settings: Settings,
    download: bool = False,
    notify: Callable[[str], object] | None = None,
    alpha: float | None = None,
) -> tuple[QueryPlan, MapperChoice | None]:
    """A query's mode, template and alpha, and the mapper it needs (None when its mode needs none), before any model
    loads; with a mapper and no ``prompt``, the template is the mapper's method's.

    A query of image and words with no mode asked for, on a backbone that has no mapper at all (``has_mapper``), is
    composed without one: ``AUTO_FUSION`` (slerp), which ``notify`` hears of, rather than refused. A backbone with a
    mapper that is not set up (none default, or a published one not downloaded) is told how, as before."""
    if choose_mode(mode, images, has_text, prompt) not in MAPPED:
        return plan(mode, images, has_text, prompt, alpha=alpha, backbone=backbone), None
    fuse = mode is None and mapper is None and not has_mapper(backbone, settings)
    choice = choose_mapper(mapper, backbone, settings, download, notify, required=not fuse)
    if choice is None:
        qp = plan(AUTO_FUSION, images, has_text, prompt, alpha=alpha, backbone=backbone)
        if notify:
            notify(f"no mapper for {backbone}: composing with the training-free {qp.mode} (alpha {qp.alpha:g}); "
                   "pass --mapper NAME|FILE for pic2word, or --mode to choose")  # fmt: skip
        return qp, None
    return plan(mode, images, has_text, prompt, choice.prompt, alpha, backbone), choice
