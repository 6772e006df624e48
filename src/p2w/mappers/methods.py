"""The composed-retrieval methods whose mappers p2w trains, loads and evaluates: one table, one row a method.

A mapper file records its method (``"method"`` metadata); the method says which network it is, the prompt its
search uses by default, and the templates its authors evaluate each benchmark with (pic2word mode only; the
baselines keep each benchmark's own templates). A prompt given with ``--prompt`` always wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2w.core.compose import DEFAULT_TEMPLATE
from p2w.errors import MapperError

THAT = "a photo of * that {text}"  # SEARLE's and LinCIR's template (their '$' is p2w's '*')


@dataclass(frozen=True)
class Method:
    """A method: its network, its default prompt, and where it comes from."""

    name: str
    network: str  # "pic2word" (Pic2Word's IM2TEXT) or "phi" (SEARLE's and LinCIR's MLP)
    prompt: str  # the default template of pic2word-mode queries with this method's mappers
    objective: str
    paper: str
    code: str
    licence: str
    eval_prompts: Mapping[str, str] = field(default_factory=dict)  # benchmark -> its authors' template


METHODS = {
    m.name: m
    for m in [
        Method(
            "pic2word",
            "pic2word",
            DEFAULT_TEMPLATE,
            "contrastive (CLIP's loss) between an unlabeled image and 'a photo of *' holding its mapped token",
            "Saito et al., Pic2Word, CVPR 2023",
            "google-research/composed_image_retrieval",
            "Apache-2.0",
        ),
        Method(
            "searle",
            "phi",
            THAT,
            "textual-inversion tokens (OTI) and GPT-written phrases distilled into phi, on ImageNet images",
            "Baldrati et al., SEARLE, ICCV 2023",
            "miccunifi/SEARLE",
            "CC BY-NC 4.0",
            {"fashioniq": THAT, "cirr": THAT, "circo": THAT},
        ),
        Method(
            "lincir",
            "phi",
            THAT,
            "text only: a caption's keyword spans become '*', phi maps the caption's own (noised) embedding to the "
            "token, MSE between the caption with the token and the caption",
            "Gu et al., LinCIR, CVPR 2024",
            "navervision/lincir",
            "CC BY-NC 4.0",
            {"fashioniq": THAT, "cirr": THAT, "circo": THAT},
        ),
    ]
}


def method(name: str) -> Method:
    """The method called ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise MapperError(f"unknown method {name!r}; use one of {', '.join(METHODS)}") from None


def method_of(metadata: Mapping[str, str], network: str | None = None) -> Method:
    """The method a mapper file records; files without the entry (older p2w files, plain state dicts) are Pic2Word's
    when they hold its network."""
    name = metadata.get("method")
    if name:
        return method(name)
    if network in (None, "pic2word"):
        return METHODS["pic2word"]
    raise MapperError("this phi mapper does not say whose it is: import it with --method searle or --method lincir")
