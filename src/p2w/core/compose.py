"""Prompt templates and query modes: ``pic2word`` (the mapped image at ``*``), the baselines ``image``, ``text`` and
``average`` of the Pic2Word paper, the training-free fusions ``slerp`` (Jang et al., ECCV 2024) and ``weighted``
(WeiMoCIR, Wu et al. 2024), and ``pic2word-slerp``, p2w's composition of the two families: the slerp from the image
to the pic2word vector. The last three weigh the text side by ``alpha`` (0: the image alone, 1: the text side alone).
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

MODES = ("pic2word", "image", "text", "average", "slerp", "weighted", "pic2word-slerp")
MAPPED = ("pic2word", "pic2word-slerp")  # the image's token at the prompt's '*': they need a mapper
FUSIONS = ("slerp", "weighted")  # training-free: the image's and the words' own embeddings
WEIGHED = (*FUSIONS, "pic2word-slerp")  # the modes weighed by alpha
# alpha on a backbone p2w has not measured (docs/methods.md): for weighted, WeiMoCIR's published value for CLIP
# ViT-B/L/H/G on FashionIQ and CIRR (its README, with its caption weight beta 0.1; p2w has no captions of the gallery,
# beta 0); the Slerp authors' code publishes none (youngkyunJang/SLERP-TAT: slerp.py has no default), 0.8 alike;
# pic2word-slerp is p2w's own, its value the one chosen on the micro world's val split (not measured elsewhere)
DEFAULT_ALPHA = {"slerp": 0.8, "weighted": 0.8, "pic2word-slerp": 0.85}
# chosen on a validation split: backbone id prefix -> mode -> alpha (docs/microworld.md, "Training-free composition")
MEASURED_ALPHA: dict[str, dict[str, float]] = {
    # the embedded micro CLIP: the best mean of class-change P@10 and colour-change R@10 on micro-fashion's val split
    # (tools/microworld/fusion_study.py; pic2word-slerp with the shipped mapper)
    "p2w-micro-fashion/builtin-": {"slerp": 0.7, "weighted": 0.65, "pic2word-slerp": 0.85},
}
DEFAULT_TEMPLATE = "a photo of * , {text}"
TRAIN_PROMPT = "a photo of *"
SLOT = "{text}"
_STAR_RUN = re.compile(r"\s*\*\s*")
MAPPER_NEEDED = (
    "pic2word mode needs a mapper: pass --mapper NAME|FILE (or use --mode slerp/weighted/average/image/text)"
)


@dataclass(frozen=True)
class QueryPlan:
    """How a query is encoded: its mode, the template its text goes into (``{text}`` is the slot), and for a fusion
    the text side's weight ``alpha`` (None for the modes that weigh nothing)."""

    mode: str
    template: str
    alpha: float | None = None

    @property
    def needs_mapper(self) -> bool:
        """The modes that map the image to a token."""
        return self.mode in MAPPED

    @property
    def needs_text_tower(self) -> bool:
        """Modes that run the text tower."""
        return self.mode != "image"


def choose_mode(mode: str | None, has_image: bool | int, has_text: bool, prompt: str | None = None) -> str:
    """The mode of a query, checked against what it has, e.g. ``choose_mode(None, 1, True)`` -> ``"pic2word"``.

    Without an explicit mode: image + text (or a prompt) -> pic2word; image alone -> image; text alone -> text (a
    plain text query). Raises ``PromptError`` for what no template can fix (an unknown mode, a missing image or text,
    several images without a prompt); ``plan`` checks the template.
    """
    images = int(has_image)
    if mode is None:
        mode = ("pic2word" if (has_text or prompt) else "image") if has_image else "text"
        if mode == "text":
            return mode  # a plain text query: TEXT as written (``plan``), or the prompt alone
    if mode not in MODES:
        raise PromptError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "text" and not has_image:
        raise PromptError(f"mode {mode} needs a query image")
    if mode == "text" and not (has_text or prompt):
        raise PromptError("mode text needs TEXT or a --prompt")
    if mode in FUSIONS and not (has_text or prompt):
        raise PromptError(f"mode {mode} needs TEXT to weigh against the image (or use --mode image)")
    if mode in MAPPED and images > 1 and prompt is None:
        raise PromptError(f"{images} query images need a --prompt with one '*' each, e.g. 'a * wearing the hat of *'")
    return mode


def default_alpha(mode: str, backbone: str = "") -> float:
    """The text side's weight of ``mode`` (one of ``WEIGHED``) when none is given: chosen on a validation split for
    the backbones in ``MEASURED_ALPHA`` (by backbone id prefix, e.g. ``p2w-micro-fashion/builtin``), else
    ``DEFAULT_ALPHA``."""
    for prefix, alphas in MEASURED_ALPHA.items():
        if backbone.startswith(prefix) and mode in alphas:
            return alphas[mode]
    return DEFAULT_ALPHA[mode]


def alpha_for(mode: str, alpha: float | None, backbone: str = "") -> float | None:
    """The alpha a query of ``mode`` is encoded with: ``alpha`` checked (0 to 1), or ``default_alpha``; None for the
    modes that weigh nothing, where a given alpha is an error rather than silently unused."""
    if mode not in WEIGHED:
        if alpha is not None:
            raise PromptError(f"--alpha weighs the text of modes {', '.join(WEIGHED)}, not of mode {mode}")
        return None
    if alpha is None:
        return default_alpha(mode, backbone)
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise PromptError(f"alpha must be between 0 (the image alone) and 1 (the text alone), not {alpha}")
    return float(alpha)


def plan(
    mode: str | None,
    has_image: bool | int,
    has_text: bool,
    prompt: str | None = None,
    default: str = DEFAULT_TEMPLATE,
    alpha: float | None = None,
    backbone: str = "",
) -> QueryPlan:
    """Choose mode, template and alpha, e.g. ``plan(None, True, True)`` -> pic2word with ``a photo of * , {text}``.

    The mode is ``choose_mode``'s; text alone without a mode is a plain text query (TEXT as written, no template).
    ``has_image`` may count the query images: with several, the i-th ``*`` of a pic2word template takes the i-th
    image, so the template needs one ``*`` per image. ``default`` is the template when no ``prompt`` is given (the
    mapper's method's: ``p2w.mappers.choice.query_template``); the fusions encode TEXT as written, as their authors
    do. ``alpha`` is ``alpha_for``'s, with the default of ``backbone`` (an id).
    """
    images = int(has_image)
    chosen = choose_mode(mode, has_image, has_text, prompt)
    if mode is None and chosen == "text":
        prompt = prompt or SLOT
    if chosen in FUSIONS:
        default = SLOT
    template = prompt if prompt is not None else default
    if chosen in MAPPED and "*" not in template:
        raise PromptError(f"{chosen} prompt {template!r} has no '*' where the image goes, e.g. {DEFAULT_TEMPLATE!r}")
    stars = template.count("*")
    if chosen in MAPPED and images > 1 and stars != images:
        raise PromptError(
            f"prompt {template!r} has {stars} '*' but {images} images were given; the i-th '*' takes the i-th image"
        )
    return QueryPlan(chosen, template, alpha_for(chosen, alpha, backbone))


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
    if mode in MAPPED and text and "*" in text:
        raise PromptError(f"TEXT {text!r} contains '*', which stands for the image in pic2word prompts; remove it")
    filled = template.replace(SLOT, text or "")
    return _STAR_RUN.sub(" * ", filled).strip()


def prompt_ids(backbone: Backbone, prompts: Sequence[str], need_star: bool | int) -> torch.Tensor:
    """Tokenize ``prompts`` ``(batch, ctx)``; with ``need_star`` (True, or a number of images), each row must hold
    exactly that many ``*`` tokens."""
    ids = backbone.tokenize(prompts)
    limit = backbone.context_length - 2  # start and end tokens
    for prompt in prompts:
        n = len(backbone.tokenizer.encode(prompt))
        if n > limit:
            log.warning("prompt is %d tokens, over the text tower's %d: cut to fit: %r", n, limit, prompt)
    if need_star:
        counts = (ids == backbone.star_id).sum(dim=1).tolist()
        for prompt, count in zip(prompts, counts, strict=True):
            _check_star(prompt, int(count), int(need_star))
    return ids


def _check_star(prompt: str, count: int, wanted: int = 1) -> None:
    if count == wanted:
        return
    if count > wanted:
        one = "exactly one" if wanted == 1 else f"one per image ({wanted})"
        raise PromptError(f"prompt {prompt!r} has {count} '*' tokens; a pic2word prompt needs {one}")
    if "*" in prompt:
        raise PromptError(f"the '*' of prompt {prompt!r} was cut off: the prompt is too long; shorten TEXT")
    raise PromptError(f"prompt {prompt!r} has no '*' token where the image goes")
