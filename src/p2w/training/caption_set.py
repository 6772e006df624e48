"""The captions of a LinCIR run as tensors: each caption's own text feature ``t`` (computed once, cached) and the
token ids of its keyword-replaced form (computed once, cached), gathered into batches for the step.

CLIP is frozen, so ``t`` of a caption never changes: it is computed once per distinct (cleaned) caption and kept in
the backbone's feature cache (``P2W_HOME/features/<backbone>.sqlite``, kind ``caption``, keyed by the SHA-256 of
the cleaned caption's text), as image features are. The replaced caption's ids depend on the keyword rule and the
seed: they are cached too (kind ``keywords/<rule>/<seed>``), so a re-run neither tags nor tokenizes. Only the
replaced caption goes through the text tower at every step (its pseudo-word changes), over its real length.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p2w.core.backbone import Backbone, TextPlan
from p2w.core.features import FeatureCache
from p2w.errors import P2WError
from p2w.progress import Progress
from p2w.training.captions import Caption, read_captions
from p2w.training.distributed import Dist
from p2w.training.keywords import KeywordRule, clean

log = logging.getLogger(__name__)

T_KIND = "caption"  # the cache kind of caption features t
CHUNK = 4096  # captions tagged and tokenized per cache transaction


@dataclass(frozen=True)
class Ragged:
    """Token-id rows of different lengths in one flat tensor; ``gather`` pads a batch of them with 0 (as CLIP's
    tokenizer pads) to the batch's longest row."""

    flat: torch.Tensor  # (total,) int32
    offsets: torch.Tensor  # (n,) int64
    lengths: torch.Tensor  # (n,) int64

    @classmethod
    def of(cls, rows: Sequence[np.ndarray]) -> Ragged:
        """From 1-D integer arrays."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        flat = torch.from_numpy(np.concatenate(rows).astype(np.int32)) if rows else torch.zeros(0, dtype=torch.int32)
        return cls(flat, offsets, lengths)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Ids ``(len(rows), longest)`` int64."""
        rows = rows.cpu()
        lengths = self.lengths[rows]
        width = torch.arange(int(lengths.max()))
        index = (self.offsets[rows, None] + width).clamp_(max=max(0, len(self.flat) - 1))
        return torch.where(width < lengths[:, None], self.flat[index].long(), 0)


@dataclass(frozen=True)
class CaptionBatch:
    """One step's captions: their features ``t`` (batch, embed_dim) and the replaced captions' text plan."""

    t: torch.Tensor
    plan: TextPlan


@dataclass
class CaptionSet:
    """Training captions: cleaned texts, replaced ids, and ``t`` (None: encoded at every step, ``--no-cache``)."""

    texts: list[str]
    replaced: Ragged
    original: Ragged
    t: torch.Tensor | None
    rule: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, backbone: Backbone, rows: torch.Tensor) -> CaptionBatch:
        """The captions of ``rows``: ``t`` gathered from the table (or encoded now) and the replaced ids' plan."""
        if self.t is not None:
            t = self.t[rows.to(self.t.device)].to(backbone.placement.device)
        else:
            with torch.no_grad():
                t = backbone.encode_text(self.original.gather(rows))
        return CaptionBatch(t, backbone.text_plan(self.replaced.gather(rows), with_star=True))


def caption_key(text: str) -> str:
    """The cache key of a cleaned caption: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_captions(
    backbone: Backbone,
    path: Path,
    rule: KeywordRule,
    seed: int,
    home: Path,
    d: Dist,
    cache: bool = True,
    batch_size: int = 256,
    progress: Progress | None = None,
    read: list[Caption] | None = None,
) -> CaptionSet:
    """Read (unless ``read`` holds them already), clean and replace the captions of ``path`` and compute what the
    cache in ``home`` lacks (split over ranks); ``cache=False``: nothing is stored, and ``t`` is left to every step
    (LinCIR's way)."""
    texts, where, skipped = _cleaned(path, read if read is not None else read_captions(path))
    keys = [caption_key(t) for t in texts]
    distinct = dict(zip(keys, texts, strict=True))
    store = FeatureCache.for_backbone(home, backbone.id) if cache else None
    try:
        kind = f"keywords/{rule.key}/{seed}"
        ids = _cached(store, distinct, kind, d, lambda todo: _replaced_ids(backbone, rule, seed, todo), progress)
        if store is None:
            originals = dict(zip(distinct, _ids(backbone, list(distinct.values())), strict=True))
            feats = None
        else:
            originals = {}
            feats = _cached(store, distinct, T_KIND, d, lambda todo: _features(backbone, todo, batch_size), progress)
    finally:
        if store is not None:
            store.close()
    keep = [i for i, k in enumerate(keys) if len(ids[k])]
    skipped += [
        (where[i], "no word to replace, or its '*' is beyond the text tower's length")
        for i in sorted(set(range(len(keys))) - set(keep))
    ]
    rows = [keys[i] for i in keep]
    return CaptionSet(
        [texts[i] for i in keep],
        Ragged.of([ids[k] for k in rows]),
        Ragged.of([originals[k] for k in rows]) if originals else Ragged.of([]),
        _table(backbone, [feats[k] for k in rows]) if feats is not None else None,
        rule.name,
        skipped,
    )


def _cleaned(path: Path, read: list[Caption]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """The cleaned captions, where each one is (``file:line``), and what cleaning left empty."""
    texts, where, skipped = [], [], []
    for c in read:
        text = clean(c.text)
        if text:
            texts.append(text)
            where.append(f"{path.name}:{c.line}")
        else:
            skipped.append((f"{path.name}:{c.line}", "nothing left after cleaning"))
    return texts, where, skipped


def _table(backbone: Backbone, vectors: list[np.ndarray]) -> torch.Tensor:
    """Caption features ``(n, embed_dim)``, on the GPU when they fit comfortably."""
    table = torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros(0, backbone.embed_dim)
    device = backbone.placement.device
    if device.type == "cuda" and table.numel() * 4 < 0.25 * torch.cuda.mem_get_info(device)[0]:
        table = table.to(device)
    return table


Compute = Callable[[dict[str, str]], dict[str, np.ndarray]]


def _cached(
    store: FeatureCache | None,
    distinct: dict[str, str],
    kind: str,
    d: Dist,
    compute: Compute,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """One vector per distinct caption: from the cache, the missing ones computed by this rank's share and stored
    (a transaction per chunk, so an interrupted pass keeps what it did); ``store`` None: all computed here."""
    if store is None:
        return compute(distinct)
    stage = "caption features" if kind == T_KIND else "keywords"
    wanted = [(k, 0) for k in distinct]
    have = store.get(wanted, kind)
    # a rank's share is fixed by position, not by what is missing now: another rank may have stored its own already
    mine = [k for i, (k, _) in enumerate(wanted) if i % d.world == d.rank and (k, 0) not in have]
    for lo in range(0, len(mine), CHUNK):
        chunk = mine[lo : lo + CHUNK]
        done = compute({k: distinct[k] for k in chunk})
        store.put([(k, 0, done[k]) for k in chunk], kind)
        if progress:
            progress(stage, min(lo + CHUNK, len(mine)), len(mine))
    d.barrier()
    have = store.get(wanted, kind)
    lost = [k for k, _ in wanted if (k, 0) not in have]
    if lost:
        raise P2WError(f"the {stage} of {len(lost)} caption(s) are missing from {store.path}; run again")
    return {k: have[(k, 0)] for k, _ in wanted}


def _ids(backbone: Backbone, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text up to the position the text tower pools (all of them where it does not trim)."""
    if not texts:
        return []
    ids = backbone.tokenizer(list(texts))  # (n, ctx) on the CPU
    plan = backbone.text_plan(ids, with_star=False)
    width, pool = plan.ids.shape[1], plan.pool.cpu()
    lengths = pool + 1 if width == int(pool.max()) + 1 else torch.full_like(pool, width)
    return [ids[i, : int(n)].numpy() for i, n in enumerate(lengths)]


def _replaced_ids(backbone: Backbone, rule: KeywordRule, seed: int, todo: dict[str, str]) -> dict[str, np.ndarray]:
    """Ids of the keyword-replaced captions as float32 vectors (ids are exact in float32); empty where the caption
    has no word, or no ``*`` survives the tokenizer's cut at the context length."""
    keys = list(todo)
    replaced = rule.replace([todo[k] for k in keys], seed)
    kept = [i for i, r in enumerate(replaced) if r]
    out = {k: np.zeros(0, dtype=np.float32) for k in keys}
    for i, row in zip(kept, _ids(backbone, [replaced[i] for i in kept]), strict=True):
        if (row == backbone.star_id).any():
            out[keys[i]] = row.astype(np.float32)
    return out


def _features(backbone: Backbone, todo: dict[str, str], batch_size: int) -> dict[str, np.ndarray]:
    """``t`` of each caption: the projected, unnormalised text feature, in batches of similar length."""
    keys = list(todo)
    rows = _ids(backbone, [todo[k] for k in keys])
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    ragged, out = Ragged.of(rows), {}
    for lo in range(0, len(order), batch_size):
        batch = order[lo : lo + batch_size]
        with torch.no_grad():
            t = backbone.encode_text(ragged.gather(torch.tensor(batch))).cpu().numpy()
        out.update({keys[i]: t[j] for j, i in enumerate(batch)})
    return out
