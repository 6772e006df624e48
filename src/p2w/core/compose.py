"""Prompt templates and query modes: ``pic2word`` (the mapped image at ``*``), and the baselines ``image``,
``text`` and ``average`` of the Pic2Word paper.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2w.errors import PromptError

if TYPE_CHECKING:
    import torch

    from p2w.core.backbone import Backbone

log = logging.getLogger(__name__)

MODES = ("pic2word", "image", "text", "average")
DEFAULT_TEMPLATE = "a photo of * , {text}"
TRAIN_PROMPT = "a photo of *"
SLOT = "{text}"
_STAR_RUN = re.compile(r"\s*\*\s*")
MAPPER_NEEDED = "pic2word mode needs a mapper: pass --mapper NAME|FILE (or use --mode image/text/average)"


@dataclass(frozen=True)
class QueryPlan:
    """How a query is encoded: its mode and the template its text goes into (``{text}`` is the slot)."""

    mode: str
    template: str

    @property
    def needs_mapper(self) -> bool:
        """Only pic2word maps the image to a token."""
        return self.mode == "pic2word"

    @property
    def needs_text_tower(self) -> bool:
        """Modes that run the text tower."""
        return self.mode != "image"


def plan(mode: str | None, has_image: bool, has_text: bool, prompt: str | None = None) -> QueryPlan:
    """Choose mode and template, e.g. ``plan(None, True, True)`` -> pic2word with ``a photo of * , {text}``.

    Without an explicit mode: image + text (or a prompt) -> pic2word; image alone -> image; text alone -> a plain
    text query (TEXT as written, no template).
    """
    if mode is None:
        if has_image:
            mode = "pic2word" if (has_text or prompt) else "image"
        else:
            mode, prompt = "text", prompt or SLOT
    if mode not in MODES:
        raise PromptError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "text" and not has_image:
        raise PromptError(f"mode {mode} needs a query image")
    if mode == "text" and not (has_text or prompt):
        raise PromptError("mode text needs TEXT or a --prompt")
    template = prompt if prompt is not None else DEFAULT_TEMPLATE
    if mode == "pic2word" and "*" not in template:
        raise PromptError(f"pic2word prompt {template!r} has no '*' where the image goes, e.g. {DEFAULT_TEMPLATE!r}")
    return QueryPlan(mode, template)


def fill(template: str, text: str | None, mode: str = "pic2word") -> str:
    """Put ``text`` into ``template``'s ``{text}`` slot and give every ``*`` spaces around it.

    The CLIP tokenizer merges ``*`` with neighbouring punctuation (``*,`` is one token that is not ``*``), which would
    silently drop the image from the query; spacing ``*`` out keeps it a token of its own.
    """
    has_slot = SLOT in template
    if has_slot and text is None:
        raise PromptError(f"prompt {template!r} has a {SLOT} slot but no TEXT was given")
    if not has_slot and text:
        raise PromptError(f"TEXT {text!r} was given but prompt {template!r} has no {SLOT} slot to put it in")
    if mode == "pic2word" and text and "*" in text:
        raise PromptError(f"TEXT {text!r} contains '*', which stands for the image in pic2word prompts; remove it")
    filled = template.replace(SLOT, text or "")
    return _STAR_RUN.sub(" * ", filled).strip()


def prompt_ids(backbone: Backbone, prompts: Sequence[str], need_star: bool) -> torch.Tensor:
    """Tokenize ``prompts`` ``(batch, ctx)``; with ``need_star``, each row must hold exactly one ``*`` token."""
    ids = backbone.tokenize(prompts)
    limit = backbone.context_length - 2  # start and end tokens
    for prompt in prompts:
        n = len(backbone.tokenizer.encode(prompt))
        if n > limit:
            log.warning("prompt is %d tokens, over the text tower's %d: cut to fit: %r", n, limit, prompt)
    if need_star:
        counts = (ids == backbone.star_id).sum(dim=1).tolist()
        for prompt, count in zip(prompts, counts, strict=True):
            _check_star(prompt, int(count))
    return ids


def _check_star(prompt: str, count: int) -> None:
    if count == 1:
        return
    if count > 1:
        raise PromptError(f"prompt {prompt!r} has {count} '*' tokens; a pic2word prompt needs exactly one")
    if "*" in prompt:
        raise PromptError(f"the '*' of prompt {prompt!r} was cut off: the prompt is too long; shorten TEXT")
    raise PromptError(f"prompt {prompt!r} has no '*' token where the image goes")
