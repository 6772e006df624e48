"""Samples/s of p2w's mapper-training step against a faithful re-implementation of the reference step.

Reference step (``trainer.get_loss_img2text`` + optimiser step): the frozen image tower runs on every batch, the
token is inserted before <eot> of "a photo of" and the text tower runs over all 77 positions. p2w's step: image
features come from the feature cache (a table on the device), and the text tower runs over "a photo of *" only
(6 positions). Both use the same model, batch, precision, AdamW and loss; the script also checks that the two give
the same loss on the same batch (fp32, dropout off).

    python benchmarks/train_throughput.py --model ViT-L-14 --batch 128 --device cuda --steps 20
    python benchmarks/train_throughput.py --model ViT-B-32 --batch 32 --device cpu --steps 3

Random weights (``--pretrained none``) are enough: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from p2w.core.backbone import Backbone
from p2w.mappers.network import Mapper
from p2w.spec import BackboneSpec
from p2w.training.distributed import Dist
from p2w.training.objective import contrastive_loss, pic2word_loss
from p2w.training.step import TrainStep, _param_groups, adamw


def reference_text_features(bb: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """The reference's ``CLIP.encode_text_img``: insert the token before <eot> of "a photo of", 77 positions."""
    model = bb.model
    text = bb.tokenize(["a photo of"]).expand(tokens.shape[0], -1)  # (batch, 77)
    eot = int((text[0] == bb.tokenizer.eot_token_id).nonzero()[0, 0])
    with bb.placement.autocast():
        x = model.token_embedding(text)  # (batch, 77, width)
        x = torch.cat([x[:, :eot], tokens[:, None].to(x.dtype), x[:, eot:-1]], dim=1)
        x = x + model.positional_embedding.to(x.dtype)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[torch.arange(x.shape[0]), eot + 1] @ model.text_projection
    return x.float()


def reference_loss(bb: Backbone, mapper: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        feats = bb.encode_image(images)  # the image tower, every step
    return contrastive_loss(feats, reference_text_features(bb, mapper(feats)), bb.logit_scale).loss


def reference_step(bb: Backbone, mapper: Mapper, images: torch.Tensor):  # type: ignore[no-untyped-def]
    """The reference trainer's step (its AdamW is not fused); no host sync, as it logs every 100 steps only."""
    opt = torch.optim.AdamW(_param_groups(mapper, 0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    scaler = torch.amp.GradScaler(bb.placement.device.type, enabled=bb.placement.precision == "fp16")

    def step() -> torch.Tensor:
        loss = reference_loss(bb, mapper, images)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    return step


def samples_per_s(step, batch: int, steps: int, sync) -> float:  # type: ignore[no-untyped-def]
    for _ in range(2):
        step()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA where supported, else fp32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-graphs", action="store_true", help="p2w step without CUDA graphs")
    args = ap.parse_args()
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if args.device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"

    torch.manual_seed(0)
    bb = Backbone.load(BackboneSpec(args.model, "none"), device=args.device, precision=precision)
    dev = bb.placement.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    size = bb.model.visual.image_size
    images = torch.randn(args.batch, 3, *((size, size) if isinstance(size, int) else size), device=dev)
    with torch.no_grad():
        table = bb.encode_image(images).repeat(8, 1)  # the feature cache, on the device
        table = table + 0.01 * torch.randn_like(table)

    parity = _parity(args, bb, images)
    mapper = Mapper(bb.embed_dim, bb.token_width).to(dev).train()
    ref = samples_per_s(reference_step(bb, mapper, images), args.batch, args.steps, sync)
    stepper = TrainStep(bb, mapper, mapper, adamw(mapper, 1e-4, 0.1), args.batch, Dist(), graphs=not args.no_graphs)
    rows = lambda: torch.randint(len(table), (args.batch,), device=dev)  # noqa: E731
    ours = samples_per_s(lambda: stepper(table[rows()], 1e-4), args.batch, args.steps, sync)
    print(
        json.dumps(
            {
                "model": args.model,
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "precision": precision,
                "batch": args.batch,
                "steps": args.steps,
                "torch": torch.__version__,
                "reference_samples_per_s": round(ref, 1),
                "p2w_samples_per_s": round(ours, 1),
                "speedup": round(ours / ref, 1),
                "cuda_graphs": stepper.graphed,
                **parity,
            }
        )
    )


def _parity(args, bb: Backbone, images: torch.Tensor) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Loss of both paths on one batch with the mapper in eval mode: in fp32, and in the run's precision."""
    mapper = Mapper(bb.embed_dim, bb.token_width).to(bb.placement.device).eval()
    out = {}
    for label, precision in (("fp32", "fp32"), ("run", bb.placement.precision)):
        place, bb.placement = bb.placement, type(bb.placement)(bb.placement.device, precision)
        try:
            with torch.no_grad():
                feats = bb.encode_image(images)
                ref = float(contrastive_loss(feats, reference_text_features(bb, mapper(feats)), bb.logit_scale).loss)
                ours = float(pic2word_loss(bb, mapper, feats).loss)
        finally:
            bb.placement = place
        out[f"loss_reference_{label}"], out[f"loss_p2w_{label}"] = ref, ours
        out[f"loss_abs_diff_{label}"] = abs(ref - ours)
    return out


if __name__ == "__main__":
    main()
