"""A frozen open_clip model: loading, preprocessing, image encoding, and text encoding with a pseudo-word token.

The text path is Pic2Word's: the token embedding at each row's own ``*`` position is replaced by the mapped
image vector, and the feature is read at the end-of-text token, as open_clip does.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from p2w.core.checkpoints import OPENAI_EXTRA_KEYS, read_state_dict
from p2w.core.devices import Placement, placement
from p2w.core.resolve import ResolvedBackbone, resolve
from p2w.errors import ModelLoadError, PromptError
from p2w.spec import BackboneSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPlan:
    """A batch of token ids trimmed to the needed length, with where its ``*`` tokens are and where it pools.

    Every ``*`` of the batch is one entry of ``star_rows``/``star_cols``; ``star_slot`` numbers the stars of each row
    in reading order (0, 1, ...), so the i-th ``*`` of a row can take the row's i-th token.
    """

    ids: torch.Tensor  # (batch, length) int64
    rows: torch.Tensor  # arange(batch)
    star_rows: torch.Tensor | None  # (stars,) the row of each '*'
    star_cols: torch.Tensor | None  # (stars,) its position
    star_slot: torch.Tensor | None  # (stars,) its rank among its row's stars
    pool: torch.Tensor  # (batch,) the position pooled into the feature


class Backbone:
    """A frozen CLIP, e.g. ``Backbone.load(BackboneSpec("ViT-L-14", "openai"))``."""

    def __init__(self, model: Any, tokenizer: Any, spec: BackboneSpec, label: str, place: Placement) -> None:
        from open_clip import get_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.model: Any = model.to(place.device).eval().requires_grad_(False)  # open_clip CLIP/CustomTextCLIP
        self.tokenizer = tokenizer
        self.spec = spec
        self.label = label
        self.placement = place
        pp_cfg = PreprocessCfg(**get_model_preprocess_cfg(model))
        self.preprocess = image_transform_v2(pp_cfg, is_train=False)  # PIL -> (3, H, W) float32
        self._text = _text_source(model)
        self._logit_scale = float(model.logit_scale.detach().float().exp())  # frozen: read once, no sync per step
        self.star_id = _star_id(tokenizer)

    @classmethod
    def load(cls, spec: BackboneSpec, device: str | None = "auto", precision: str | None = "auto") -> Backbone:
        """Resolve ``spec`` (cache, download or local files), build the model and load its weights."""
        place = placement(device, precision)
        resolved = resolve(spec)
        state = _weights_state_dict(resolved)
        model, tokenizer = _build(spec, resolved, quick_gelu=resolved.quick_gelu or _is_openai_checkpoint(state))
        if state is not None:
            load_weights(model, state, resolved)
        return cls(model, tokenizer, spec, resolved.label, place)

    # ---- facts about the model -------------------------------------------------------------------------------
    @property
    def draft_size(self) -> int:
        """The image tower's input size (the shorter side): JPEGs are draft-decoded no smaller than this."""
        size = self.model.visual.image_size
        return size if isinstance(size, int) else min(size)

    @property
    def id(self) -> str:
        """Backbone id recorded in mapper files, e.g. ``"ViT-L-14/openai"``."""
        return self.spec.id

    @property
    def embed_dim(self) -> int:
        """Width of image (and text) features."""
        proj = self._text.text_projection  # the text tower ends in the shared embedding space
        if proj is None:
            return int(self._text.token_embedding.embedding_dim)
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def token_width(self) -> int:
        """Width of the text tower's token embeddings: the output width of a mapper."""
        return int(self._text.token_embedding.embedding_dim)

    @property
    def context_length(self) -> int:
        """Number of token positions of the text tower."""
        return int(self._text.positional_embedding.shape[0])

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature, ``exp(logit_scale)``, not clamped (as the reference trainer uses it)."""
        return self._logit_scale

    # ---- encoding ---------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(batch, context_length)`` int64 on the model's device."""
        return self.tokenizer(list(texts)).to(self.placement.device)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(batch, 3, H, W)`` -> unnormalised features ``(batch, embed_dim)`` float32."""
        with self.placement.autocast():
            return self.model.encode_image(pixels.to(self.placement.device, non_blocking=True)).float()

    def encode_text(self, ids: torch.Tensor, star_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``(batch, ctx)`` -> unnormalised features ``(batch, embed_dim)`` float32.

        With ``star_tokens`` ``(batch, token_width)``, every ``*`` of row i takes ``star_tokens[i]`` (one token per
        row); with ``(batch, k, token_width)``, the j-th ``*`` of row i takes ``star_tokens[i, j]`` (a row must then
        have at most k stars). Only the positions up to the last end-of-text token of the batch are encoded: with a
        causal text tower, later positions cannot change the pooled feature.
        """
        return self.encode_planned(self.text_plan(ids, with_star=star_tokens is not None), star_tokens)

    def text_plan(self, ids: torch.Tensor, with_star: bool) -> TextPlan:
        """Everything about a batch of token ids that ``encode_planned`` needs, computed once (it syncs the GPU)."""
        ids = ids.to(self.placement.device)
        ids = ids[:, : self._needed_length(ids)]  # (batch, length)
        rows = torch.arange(ids.shape[0], device=ids.device)
        star_rows = star_cols = star_slot = None
        if with_star:
            hits = torch.eq(ids, self.star_id)  # (batch, length)
            missing = (hits.sum(dim=1) == 0).nonzero()
            if len(missing):
                raise PromptError(
                    f"prompt row {int(missing[0, 0])} has no '*' token; a pic2word prompt needs exactly one per image"
                )
            star_rows, star_cols = hits.nonzero(as_tuple=True)  # row-major: each row's stars in reading order
            star_slot = (hits.cumsum(dim=1) - 1)[star_rows, star_cols]
        return TextPlan(ids, rows, star_rows, star_cols, star_slot, self._pool_positions(ids))

    def encode_planned(self, plan: TextPlan, star_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``encode_text`` for a prepared plan: no host synchronisation, so it can run inside a CUDA graph."""
        src, ids, length = self._text, plan.ids, plan.ids.shape[1]
        with self.placement.autocast():
            x = src.token_embedding(ids)  # (batch, length, width)
            if star_tokens is not None:
                assert plan.star_rows is not None and plan.star_cols is not None, "plan made without with_star"
                if star_tokens.dim() == 3:  # (batch, k, width): the j-th star of a row takes its j-th token
                    tokens = star_tokens[plan.star_rows, plan.star_slot]
                else:  # (batch, width): every star of a row takes the row's token
                    tokens = star_tokens[plan.star_rows]
                x = x.index_put((plan.star_rows, plan.star_cols), tokens.to(x.dtype))
            cast_dtype = src.transformer.get_cast_dtype()
            x = x.to(cast_dtype) + src.positional_embedding[:length].to(cast_dtype)
            mask = src.attn_mask[:length, :length] if src.attn_mask is not None else None
            x = src.ln_final(src.transformer(x, attn_mask=mask))
            x = x[plan.rows, plan.pool]  # (batch, width)
            proj = src.text_projection
            if proj is not None:
                x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return x.float()

    def star_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of the single ``*`` token in each row ``(batch,)``; a row without exactly one is an error."""
        hits = torch.eq(ids, self.star_id)
        counts = hits.sum(dim=1)
        if bool((counts != 1).any()):
            row = int((counts != 1).nonzero()[0, 0])
            raise PromptError(
                f"prompt row {row} has {int(counts[row])} '*' tokens; a pic2word prompt needs exactly one"
            )
        return hits.int().argmax(dim=1)

    def _pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self._text.pool_type == "eos":
            eos = self._text.eos_id
            assert eos is not None, "open_clip sets eos_id for pool_type 'eos'"
            return torch.eq(ids, eos).int().argmax(dim=1)
        if self._text.pool_type == "argmax":
            return ids.argmax(dim=1)  # end-of-text has the largest id in CLIP's vocabulary
        return torch.full((ids.shape[0],), ids.shape[1] - 1 if self._text.pool_type == "last" else 0, device=ids.device)

    def _needed_length(self, ids: torch.Tensor) -> int:
        causal = self._text.attn_mask is not None
        if causal and self._text.pool_type in ("argmax", "eos"):
            return int(self._pool_positions(ids).max()) + 1
        return int(ids.shape[1])


class _TextSource:
    """The text-tower parts of an open_clip ``CLIP`` (on the model) or ``CustomTextCLIP`` (on ``model.text``)."""

    def __init__(self, owner: nn.Module, pool_type: str, eos_id: int | None) -> None:
        self.owner = owner
        self.pool_type = pool_type
        self.eos_id = eos_id

    def __getattr__(self, name: str) -> Any:  # read live, so device moves are seen
        return getattr(self.owner, name)


def _text_source(model: Any) -> _TextSource:
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if text is None and hasattr(model, "token_embedding"):
        return _TextSource(model, model.text_pool_type, getattr(model, "text_eos_id", None))
    if not isinstance(text, TextTransformer) or text.cls_emb is not None or text.use_pad_mask:
        raise ModelLoadError(
            f"the text tower of this model ({type(text).__name__}) has no plain token-embedding path, "
            "so a pseudo-word token cannot be injected; choose a CLIP-style open_clip model"
        )
    return _TextSource(text, text.pool_type, text.eos_id)


def _star_id(tokenizer: Any) -> int:
    encode = getattr(tokenizer, "encode", None)
    ids = encode("*") if encode is not None else []
    if len(ids) != 1:
        raise ModelLoadError(
            f"tokenizer {type(tokenizer).__name__} has no single '*' token; p2w needs a CLIP-style BPE tokenizer"
        )
    return int(ids[0])


def _weights_state_dict(resolved: ResolvedBackbone) -> dict[str, torch.Tensor] | None:
    if resolved.weights is None:
        log.warning("no weights for %s: the model is randomly initialised", resolved.label)
        return None
    return read_state_dict(resolved.weights)


def _is_openai_checkpoint(state: dict[str, torch.Tensor] | None) -> bool:
    """OpenAI's checkpoints carry ``input_resolution`` & co. and were trained with QuickGELU."""
    return state is not None and any(k in state for k in OPENAI_EXTRA_KEYS)


def _build(spec: BackboneSpec, resolved: ResolvedBackbone, quick_gelu: bool) -> tuple[nn.Module, Any]:
    import open_clip

    with tempfile.TemporaryDirectory(prefix="p2w-model-") as tmp:
        config = {"model_cfg": resolved.model_cfg, "preprocess_cfg": resolved.preprocess_cfg}
        Path(tmp, "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
        try:
            model = open_clip.create_model(f"local-dir:{tmp}", force_quick_gelu=quick_gelu)
            tokenizer = open_clip.get_tokenizer(spec.model if spec.config_path is None else f"local-dir:{tmp}")
        except Exception as exc:  # open_clip raises assorted errors for configs it cannot build
            raise ModelLoadError(f"open_clip cannot build {resolved.label}: {type(exc).__name__}: {exc}") from exc
    return model, tokenizer


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], resolved: ResolvedBackbone) -> None:
    """Load a state dict in open_clip's or OpenAI-CLIP's layout, strictly (every key must fit)."""
    try:
        missing, unexpected = model.load_state_dict(_adapt(model, state), strict=False)
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        raise ModelLoadError(f"weights {resolved.weights} do not fit {resolved.label}: {detail}") from exc
    if missing or unexpected:
        raise ModelLoadError(
            f"weights {resolved.weights} do not fit {resolved.label}: {len(missing)} missing key(s)"
            f"{' e.g. ' + missing[0] if missing else ''}, {len(unexpected)} unexpected"
            f"{' e.g. ' + unexpected[0] if unexpected else ''}; check --model"
        )


def _adapt(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's own checkpoint massaging (as in ``open_clip.load_checkpoint``), on an in-memory state dict."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)  # OpenAI layout -> CustomTextCLIP's text.* keys
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and target.ndim != state[key].ndim:
            state[key] = state[key].reshape(target.shape)
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state
