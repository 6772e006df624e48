"""The p2w engine: a frozen backbone plus (optionally) a mapper, encoding images and composed queries; ``load`` picks
the backbone and the mapper by the library's policy (defaults from ``Settings``; the mapper by
``p2w.mappers.choice.choose_mapper``, the template by ``query_template``).

One decoding policy: every image given as a path is opened as ``p2w index`` opens it (``open_image`` with JPEG draft
decoding at the model's input size), so the same file gives the same vector through ``encode_images``, a query,
``p2w embed image`` and the catalog."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from p2w.core.backbone import Backbone
from p2w.core.compose import FUSIONS, MAPPED, MAPPER_NEEDED, QueryPlan, fill, plan, prompt_ids
from p2w.core.fusion import fuse
from p2w.core.images import ImageLike, open_image
from p2w.core.resolve import mapper_dims
from p2w.errors import MapperError, PromptError
from p2w.mappers.choice import DEFAULT, choose_mapper, query_template
from p2w.mappers.files import MapperFile, check_dims, check_fits, read_mapper
from p2w.mappers.methods import METHODS, Method
from p2w.mappers.network import TokenMapper
from p2w.mappers.registry import mapper_label, missing_mapper_hint
from p2w.settings import Settings

QueryImages = ImageLike | Sequence[ImageLike] | None  # one image, a list of images (``*`` by ``*``), or none


def _as_list(images: QueryImages) -> list[ImageLike]:
    """A query's images as a list: a list or tuple is several images, anything else one (or none)."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]  # type: ignore[list-item]


class Engine:
    """Encodes images and queries into one embedding space, e.g. ``p2w.load(...).encode_query("a.jpg", "in red")``.

    Every ``encode_*`` method returns float32 numpy arrays, L2-normalised unless ``normalize=False``.
    """

    def __init__(self, backbone: Backbone, mapper: TokenMapper | None = None, mapper_file: MapperFile | None = None):
        self.backbone = backbone
        self.mapper = mapper.to(backbone.placement.device).eval().requires_grad_(False) if mapper is not None else None
        self.mapper_file = mapper_file
        self.missing_mapper = MAPPER_NEEDED  # what a pic2word query without a mapper is told

    @property
    def method(self) -> Method | None:
        """The mapper's method (its file's record; a network given without a file: Pic2Word's for its network,
        the phi methods' template otherwise); None without a mapper."""
        if self.mapper_file is not None:
            return self.mapper_file.method
        if self.mapper is None:
            return None
        return METHODS["pic2word"] if self.mapper.network == "pic2word" else METHODS["lincir"]

    @property
    def mapper_name(self) -> str | None:
        """How the mapper is called (its registered name, the shipped model's name, or the file's stem)."""
        return mapper_label(self.mapper_file.path) if self.mapper_file is not None else None

    @property
    def default_prompt(self) -> str:
        """The template of queries given no prompt: ``query_template`` of the mapper's method (``a photo of * ,
        {text}`` for Pic2Word's, ``a photo of * that {text}`` for SEARLE's and LinCIR's; Pic2Word's without one)."""
        return query_template(self.method)

    # ---- public, numpy -----------------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[ImageLike], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Image embeddings ``(n, embed_dim)``."""
        return self._batched(lambda i, j: self.image_features(images[i:j]), len(images), batch_size, normalize)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
        """Plain CLIP text embeddings ``(n, embed_dim)`` of ``texts`` as written."""

        def run(i: int, j: int) -> torch.Tensor:
            return self.backbone.encode_text(self.backbone.tokenize(texts[i:j]))

        with torch.inference_mode():
            return self._batched(run, len(texts), batch_size, normalize)

    def encode_query(
        self,
        image: QueryImages = None,
        text: str | None = None,
        mode: str | None = None,
        prompt: str | None = None,
        normalize: bool = True,
        alpha: float | None = None,
    ) -> np.ndarray:
        """One query embedding ``(embed_dim,)``; ``image`` may be a list of images; see ``encode_queries``."""
        return self.encode_queries([image], [text], mode=mode, prompt=prompt, normalize=normalize, alpha=alpha)[0]

    def encode_queries(
        self,
        images: Sequence[QueryImages],
        texts: Sequence[str | None],
        mode: str | None = None,
        prompt: str | None = None,
        normalize: bool = True,
        batch_size: int = 64,
        alpha: float | None = None,
    ) -> np.ndarray:
        """Query embeddings ``(n, embed_dim)`` for paired images and texts (either may be None where the mode allows).

        ``mode``: ``pic2word`` (the mapped image at the template's ``*``), ``image``, ``text`` (the filled template
        with a literal ``*``), ``average`` (``l2n(l2n(image) + l2n(text))``), the training-free fusions ``slerp`` and
        ``weighted``, or ``pic2word-slerp`` (the slerp from the image to the pic2word vector); ``p2w.core.fusion``:
        ``alpha`` is the text side's weight, default ``compose.default_alpha`` of this backbone.
        ``prompt`` is the template, with ``*`` and optionally ``{text}`` (default ``a photo of * , {text}``; the
        fusions': ``{text}``, TEXT as written). With ``normalize=False`` the unnormalised output is returned (for
        ``average``: the sum before the final normalisation).

        A query may have several images (a list): the i-th ``*`` of the template takes the i-th image's token;
        ``average`` sums every image's unit vector with the text's, ``image`` the images' (every query of a batch
        has the same number of images); the fusions start from them as ``p2w.core.fusion`` says.
        """
        if len(images) != len(texts):
            raise PromptError(f"{len(images)} images but {len(texts)} texts; queries pair them one to one")
        rows = [_as_list(img) for img in images]
        default, bb = self.default_prompt, self.backbone.id
        plans = {
            plan(mode, len(imgs), bool(txt), prompt, default, alpha, bb) for imgs, txt in zip(rows, texts, strict=True)
        }
        counts = {len(imgs) for imgs in rows}
        if len(plans) > 1 or len(counts) > 1:
            raise PromptError("queries of one batch must all have the same number of images")
        if not plans:
            return np.zeros((0, self.backbone.embed_dim), dtype=np.float32)
        qp = plans.pop()
        filled = [fill(qp.template, txt, qp.mode) if qp.needs_text_tower else "" for txt in texts]

        def run(i: int, j: int) -> torch.Tensor:
            return self._query_features(qp, rows[i:j], filled[i:j])

        return self._batched(run, len(texts), batch_size, normalize)

    def encode_query_features(
        self,
        image_features: torch.Tensor | None,
        text: str | None = None,
        mode: str | None = None,
        prompt: str | None = None,
        alpha: float | None = None,
    ) -> np.ndarray:
        """One unit query vector ``(embed_dim,)`` from image features already computed (unnormalised
        ``(embed_dim,)``, or ``(k, embed_dim)`` for k images, e.g. uploads or catalogued photos), so a refined query
        skips the image tower; the same vector as ``encode_query`` on those images."""
        count = 0 if image_features is None else (1 if image_features.dim() == 1 else int(image_features.shape[0]))
        qp = plan(mode, count, bool(text), prompt, self.default_prompt, alpha, self.backbone.id)
        filled = fill(qp.template, text, qp.mode) if qp.needs_text_tower else ""
        feats = None
        if image_features is not None and qp.mode != "text":
            feats = image_features.reshape(1, -1) if count == 1 else image_features.reshape(1, count, -1)
        return self._batched(lambda i, j: self.compose(qp, feats, [filled]), 1, 1, normalize=True)[0]

    # ---- torch level (used by the server and evaluation) ---------------------------------------------------------
    def image_features(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Unnormalised image features ``(batch, embed_dim)`` float32 (paths decoded as the catalog decodes them)."""
        with torch.inference_mode():
            return self.backbone.encode_image(self._pixels(images))

    def _pixels(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Preprocessed batch ``(batch, 3, H, W)`` float32 on the CPU: the one decoding policy (module docstring)."""
        draft = self.backbone.draft_size
        return torch.stack([self.backbone.preprocess(open_image(im, draft=draft)) for im in images])

    def _query_features(
        self, qp: QueryPlan, images: Sequence[Sequence[ImageLike]], prompts: Sequence[str]
    ) -> torch.Tensor:
        """Unnormalised query features ``(batch, embed_dim)`` of already filled ``prompts``; ``images[i]`` are row
        i's images (all rows as many)."""
        with torch.inference_mode():
            image = None
            k = len(images[0]) if images else 0
            if qp.mode != "text" and k:
                # one batch per slot: a query's image is encoded in the same batch shape wherever it comes from (a
                # file here, an upload to p2w serve), so its features, and the query, are the same to the bit
                slots = [self.backbone.encode_image(self._pixels([row[j] for row in images])) for j in range(k)]
                image = slots[0] if k == 1 else torch.stack(slots, dim=1)  # (batch, dim) or (batch, k, dim)
            return self.compose(qp, image, prompts)

    def compose(self, qp: QueryPlan, image: torch.Tensor | None, prompts: Sequence[str]) -> torch.Tensor:
        """Unnormalised query features ``(batch, embed_dim)`` from (unnormalised) image features ``(batch, embed_dim)``
        (or ``(batch, k, embed_dim)`` for k images a query) already computed, e.g. cached by an evaluation, and
        filled prompts."""
        bb = self.backbone
        with torch.inference_mode():
            if qp.mode == "text":
                return bb.encode_text(prompt_ids(bb, prompts, need_star=False))
            assert image is not None, f"mode {qp.mode} needs image features"
            image = image.to(bb.placement.device)
            several = image.dim() == 3
            if qp.mode == "image":
                return F.normalize(image, dim=-1).sum(dim=1) if several else image
            if qp.mode in MAPPED:
                tokens = self._require_mapper()(image)  # (batch, token_width) or (batch, k, token_width)
                composed = bb.encode_text(prompt_ids(bb, prompts, need_star=image.shape[1] if several else 1), tokens)
                if qp.mode == "pic2word":
                    return composed
                assert qp.alpha is not None, f"mode {qp.mode} needs an alpha"
                return fuse(qp.mode, qp.alpha, image, composed)  # pic2word-slerp: from the image to ``composed``
            text = bb.encode_text(prompt_ids(bb, prompts, need_star=False))
            if qp.mode in FUSIONS:
                assert qp.alpha is not None, f"mode {qp.mode} needs an alpha"
                return fuse(qp.mode, qp.alpha, image, text)
            unit = F.normalize(image, dim=-1)
            return (unit.sum(dim=1) if several else unit) + F.normalize(text, dim=-1)

    def _require_mapper(self) -> TokenMapper:
        if self.mapper is None:
            raise MapperError(self.missing_mapper)
        return self.mapper

    def _batched(self, run: Callable[[int, int], torch.Tensor], n: int, batch_size: int, normalize: bool) -> np.ndarray:
        parts = [run(i, min(i + batch_size, n)) for i in range(0, n, max(1, batch_size))]
        if not parts:
            return np.zeros((0, self.backbone.embed_dim), dtype=np.float32)
        out = torch.cat(parts)
        if normalize:
            out = F.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def load(
    model: str | None = None,
    pretrained: str | None = None,
    mapper: str | Path | TokenMapper | None = DEFAULT,
    device: str | None = None,
    precision: str | None = "auto",
    force_mapper: bool = False,
    download: bool = False,
    settings: Settings | None = None,
    need_mapper: bool = False,
) -> Engine:
    """Load a backbone and its mapper, e.g. ``p2w.load("ViT-L-14", "openai")``.

    Args:
        model: an open_clip model name or a model-config JSON (default ``P2W_MODEL``, else ``ViT-L-14``).
        pretrained: an open_clip tag, a weights file, or ``"none"`` (default ``P2W_PRETRAINED``, else the model's).
        mapper: ``"default"`` (the backbone's default mapper when it has one; with ``download=True`` the known
            published one is fetched), a registered name, a file, a ``Mapper``/``Phi`` object, or None (no mapper:
            image, text and average queries only). Chosen by ``p2w.mappers.choice.choose_mapper``.
        device, precision: ``auto`` (cuda > mps > cpu; fp16 autocast on CUDA), or as named.
        force_mapper: use a mapper file made for another backbone of the same widths.
        need_mapper: with ``mapper="default"``, a backbone without one is an error (before the model loads) instead
            of an engine without a mapper.
    Returns:
        An ``Engine``.
    Raises:
        MapperError: the mapper is missing, unreadable, or does not fit the backbone (checked before the model is
            built where the widths are known from the config).
        ModelUnavailableError, ModelLoadError, DeviceError: the backbone cannot be had or run here.
    """
    settings = settings or Settings.from_env()
    spec = settings.backbone(model, pretrained)
    mapper_file = None
    if isinstance(mapper, (str, Path)):
        required = need_mapper or mapper != DEFAULT
        choice = choose_mapper(mapper, spec.id, settings, download=download, required=required)
        if choice is not None:
            mapper_file = read_mapper(choice.path)
            dims = mapper_dims(spec)  # cheap checks before the model is built
            if dims is not None:
                check_fits(mapper_file, spec.id, *dims, force=force_mapper)
        mapper = mapper_file.mapper if mapper_file is not None else None
    backbone = Backbone.load(spec, device=device or settings.device, precision=precision)
    if mapper_file is not None:
        check_fits(mapper_file, backbone.id, backbone.embed_dim, backbone.token_width, force=force_mapper)
    elif mapper is not None:
        check_dims(mapper, "the mapper given", backbone.id, backbone.embed_dim, backbone.token_width)
    engine = Engine(backbone, mapper, mapper_file)
    if engine.mapper is None:
        engine.missing_mapper = missing_mapper_hint(backbone.id)
    return engine
