"""Setting a run up before its first step: the backbone, the image features and captions (from the caches), the
batches, the schedule, the mapper (Pic2Word's or phi), its optimiser and the step."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from p2w.core.backbone import Backbone
from p2w.core.devices import resolve_device, resolve_precision
from p2w.errors import P2WError
from p2w.mappers.network import Mapper, Phi, TokenMapper
from p2w.settings import Settings
from p2w.spec import BackboneSpec
from p2w.training.caption_set import CaptionSet, load_captions
from p2w.training.caption_step import CaptionStep
from p2w.training.captions import Caption, read_captions
from p2w.training.config import Callbacks, TrainConfig
from p2w.training.data import TrainingData, training_data
from p2w.training.distributed import Dist
from p2w.training.keywords import keyword_rule
from p2w.training.schedule import (
    CAPTION_STREAM,
    Cursor,
    caption_steps,
    default_warmup,
    local_batch,
    round_steps,
    steps_per_epoch,
)
from p2w.training.state import Run
from p2w.training.step import TrainStep, adamw, lincir_adamw
from p2w.training.trainset import FeatureSource, layout_features, load_features, split_rows

log = logging.getLogger(__name__)

Skipped = list[tuple[str, str]]


def prepare(
    cfg: TrainConfig, name: str, spec: BackboneSpec, settings: Settings, d: Dist, cb: Callbacks
) -> tuple[Run, Skipped]:
    """Everything ``cfg`` (with its defaults filled in) needs before the first step; bad inputs fail before the
    model is loaded."""
    data = d.once(lambda: training_data(os.path.expanduser(cfg.data), cfg.path_column)) if cfg.data else None
    read = read_captions(Path(cfg.captions).expanduser()) if cfg.captions else None
    device = d.device(cfg.device)
    cb.stage(f"loading {Path(str(cfg.model)).name} with weights {Path(str(cfg.pretrained)).name}")
    precision = resolve_precision(cfg.precision, resolve_device(device), training=True)
    backbone = Backbone.load(spec, device=device, precision=precision)
    source, train_rows, val_rows, skipped = _images(cfg, backbone, data, settings, d, cb)
    captions = _captions(cfg, backbone, read, settings, d, cb) if read is not None else None
    images, texts = _cursors(cfg, d, train_rows, source, captions)
    skipped += captions.skipped if captions is not None else []
    per_epoch = steps_per_epoch(cfg.objective, cfg.mix, images, texts)
    total = _total_steps(cfg, per_epoch)
    mapper, stepper = _model(cfg, backbone, images.local_batch if images is not None else None, d)
    run = Run(
        cfg=cfg,
        name=name,
        backbone=backbone,
        source=source,
        train_rows=train_rows,
        val_rows=val_rows,
        mapper=mapper,
        stepper=stepper,
        d=d,
        images=images,
        captions=captions,
        caption_batches=texts,
        steps_per_epoch=per_epoch,
        round_steps=round_steps(per_epoch, captions is not None),
        total_steps=total,
        warmup=cfg.warmup if cfg.warmup is not None else default_warmup(total, captions is not None),
    )
    return run, skipped


def _total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    """``--max-steps``, else ``--epochs`` epochs, else (with captions) a length that fits the caption file."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.epochs is not None:
        return per_epoch * cfg.epochs
    return caption_steps(per_epoch)


def _cursors(
    cfg: TrainConfig, d: Dist, train_rows: torch.Tensor, source: FeatureSource | None, captions: CaptionSet | None
) -> tuple[Cursor | None, Cursor | None]:
    """The batches of the images and of the captions (None for a source the run does not have)."""
    batch = cfg.batch_size or 2
    images = texts = None
    if source is not None:
        n = len(train_rows)
        images = Cursor(train_rows, local_batch(batch, n, d, "images"), d, cfg.seed, source.views_per_image)
    if captions is not None:
        n = len(captions)
        texts = Cursor(torch.arange(n), local_batch(batch, n, d, "captions"), d, cfg.seed + CAPTION_STREAM)
    return images, texts


def _images(
    cfg: TrainConfig, backbone: Backbone, data: TrainingData | None, settings: Settings, d: Dist, cb: Callbacks
) -> tuple[FeatureSource | None, torch.Tensor, torch.Tensor, Skipped]:
    """The image features (from the cache, or a layout's vectors) and the held-out split; nothing without images."""
    none = torch.zeros(0, dtype=torch.long)
    if not cfg.has_images:
        return None, none, none, []
    if cfg.embeddings:
        cb.stage(f"image features from the layout {cfg.embeddings}")
        source, images = layout_features(Path(cfg.embeddings).expanduser(), backbone)
    else:
        assert data is not None, "cfg.has_images: --data or --embeddings"
        named = [f"{len(data.files)} files"] * bool(data.files) + [f"{len(data.shards)} shards"] * bool(data.shards)
        cb.stage(f"image features of {' and '.join(named)}")
        source, images = load_features(
            backbone,
            data,
            settings.home,
            d,
            views=cfg.augment_views,
            cache=cfg.cache,
            workers=cfg.workers,
            batch_size=cfg.batch_size or 128,
            progress=cb.progress,
        )
    if len(images.hashes) < 2:
        where = cfg.data or cfg.embeddings
        raise P2WError(f"{where} has {len(images.hashes)} readable image(s); training needs at least 2")
    train_rows, val_rows = split_rows(images.hashes, cfg.val_fraction, cfg.seed)
    return source, train_rows, val_rows, list(images.skipped)


def _captions(
    cfg: TrainConfig, backbone: Backbone, read: list[Caption], settings: Settings, d: Dist, cb: Callbacks
) -> CaptionSet:
    """The captions with their features and replaced forms (from the cache); the keyword rule is logged."""
    rule = keyword_rule(cfg.keywords)
    cb.stage(f"{len(read)} captions; keywords: {rule.name}")
    log.debug("keyword spans by %s", rule.name)  # the stage line says it; the mapper records it
    path = Path(str(cfg.captions)).expanduser()
    captions = load_captions(
        backbone,
        path,
        rule,
        cfg.seed,
        settings.home,
        d,
        cache=cfg.cache,
        batch_size=max(64, cfg.batch_size or 256),
        progress=cb.progress,
        read=read,
    )
    if len(captions) < 2:
        raise P2WError(f"{cfg.captions} has {len(captions)} usable caption(s); training needs at least 2")
    return captions


def _model(
    cfg: TrainConfig, backbone: Backbone, image_batch: int | None, d: Dist
) -> tuple[TokenMapper, TrainStep | CaptionStep]:
    """A fresh mapper (seeded), wrapped for DDP on several processes, with its optimiser and step."""
    assert cfg.dropout is not None and cfg.weight_decay is not None, "cfg.with_defaults() fills them"
    torch.manual_seed(cfg.seed)
    dims = (backbone.embed_dim, backbone.token_width)
    mapper: TokenMapper = (
        Mapper(*dims, cfg.hidden_dim or 512, dropout=cfg.dropout)
        if cfg.network == "pic2word"
        else Phi(*dims, cfg.hidden_dim, dropout=cfg.dropout)
    )
    mapper = mapper.to(backbone.placement.device).train()
    model: nn.Module = mapper
    if d.world > 1:
        ids = [backbone.placement.device.index] if backbone.placement.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(mapper, device_ids=ids)
    torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout and noise stream, per rank
    wd = cfg.weight_decay
    if cfg.objective == "pic2word":
        assert image_batch is not None
        stepper = TrainStep(backbone, mapper, model, adamw(mapper, cfg.lr, wd), image_batch, d, cfg.cuda_graphs)
        return mapper, stepper
    optimizer = lincir_adamw(mapper, cfg.lr, wd)
    return mapper, CaptionStep(backbone, mapper, model, optimizer, d, cfg.noise, image_batch, cfg.cuda_graphs)
