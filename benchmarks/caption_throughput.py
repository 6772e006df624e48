"""Samples/s of p2w's caption-training step (``p2w train --captions``) against a faithful re-implementation of
LinCIR's step, on the same model, batch, precision and captions.

LinCIR's step (``train_phi.py``, re-implemented from the facts of its method, not its code): the caption's own
feature ``t`` is computed by the text tower over all its positions (77 for CLIP) at every step (no cache),
``x = t + U(0,1) * N(0, I)``, ``phi(x)`` goes to every slot of the keyword-replaced caption, the text tower runs
over all positions again, MSE to ``t``, AdamW (betas 0.9/0.999, eps 1e-8, wd 0.01). p2w's step
(``p2w.training.caption_step.CaptionStep``, what ``p2w train --captions`` runs): ``t`` gathered from the feature
cache (a table on the device), the replaced captions over the batch's real length only. A middle variant (``t``
cached, replaced captions over all positions) shows which of the two savings gives how much. Tokenizing and keyword
tagging are left out on both sides (LinCIR does them in DataLoader workers, p2w once per caption, cached). Before
timing, the script checks that LinCIR's and p2w's losses agree on one batch (fp32, phi in eval mode, the same
noise), and that the trimmed ``t`` p2w caches equals the all-positions ``t``.

    python benchmarks/caption_throughput.py --model ViT-B-32 --batch 32 --device cpu --steps 3
    python benchmarks/caption_throughput.py --model p2w-micro-fashion --pretrained builtin --batch 256 --device cpu
    python benchmarks/caption_throughput.py --model ViT-L-14 --batch 256 --device cuda --steps 20

Captions are seeded CC3M-like sentences (``synthetic_captions``: 6 to 18 words, mean ~11); random weights
(``--pretrained none``) are enough for speed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from p2w.core.backbone import Backbone
from p2w.mappers.network import Phi
from p2w.spec import BackboneSpec
from p2w.training.caption_set import CaptionBatch, Ragged, _ids
from p2w.training.caption_step import CaptionStep
from p2w.training.distributed import Dist
from p2w.training.keywords import clean, stopword_rule
from p2w.training.objective import caption_noise, lincir_loss
from p2w.training.step import lincir_adamw

ADJ = [
    "red",
    "blue",
    "small",
    "large",
    "old",
    "young",
    "wooden",
    "white",
    "black",
    "green",
    "happy",
    "empty",
    "busy",
    "tall",
    "bright",
    "dark",
]
NOUN = [
    "man",
    "woman",
    "dog",
    "cat",
    "car",
    "street",
    "house",
    "table",
    "tree",
    "beach",
    "child",
    "bike",
    "shirt",
    "dress",
    "boat",
    "city",
    "room",
    "kitchen",
]
VERB = ["sitting", "standing", "walking", "holding", "riding", "looking", "playing", "waiting"]
PREP = ["on", "in", "near", "under", "behind", "with", "next", "to", "at", "beside"]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """Seeded captions of 6 to 18 words: CC3M's captions average about 10 words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = ["a", rng.choice(ADJ), rng.choice(NOUN), rng.choice(VERB), rng.choice(PREP), "the", rng.choice(NOUN)]
        while len(words) < rng.randint(6, 18):
            words += [rng.choice(PREP), "a", rng.choice(ADJ), rng.choice(NOUN)]
        out.append(" ".join(words))
    return out


def full_text(bb: Backbone, ids: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's text tower over every position (77), ``tokens[i]`` at every ``*`` of row i: LinCIR's encoder."""
    model = bb.model
    with bb.placement.autocast():
        x = model.token_embedding(ids)
        if tokens is not None:
            x = torch.where((ids == bb.star_id)[..., None], tokens[:, None, :].to(x.dtype), x)
        x = x + model.positional_embedding.to(x.dtype)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ model.text_projection
    return x.float()


def lincir_step(bb: Backbone, phi: Phi, ids: torch.Tensor, replaced: torch.Tensor, cached: torch.Tensor | None):
    """LinCIR's step; with ``cached`` t, the middle variant (t from the table, replaced over 77 positions)."""
    opt = torch.optim.AdamW(phi.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> torch.Tensor:
        if cached is None:
            with torch.no_grad():
                t = full_text(bb, ids)  # every step, 77 positions
        else:
            t = cached
        loss = F.mse_loss(full_text(bb, replaced, phi(caption_noise(t))), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def samples_per_s(step: Callable[[], torch.Tensor], batch: int, steps: int, sync: Callable[[], None]) -> float:
    for _ in range(2):
        step()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - start)


def batch_ids(bb: Backbone, batch: int) -> tuple[torch.Tensor, torch.Tensor, Ragged, float]:
    """The captions' ids (77 positions), the replaced ones (77), the replaced ones ragged, their mean length."""
    texts = [clean(c) for c in synthetic_captions(batch)]
    replaced = stopword_rule().replace(texts, 0)
    ragged = Ragged.of(_ids(bb, replaced))
    dev = bb.placement.device
    return bb.tokenizer(texts).to(dev), bb.tokenizer(replaced).to(dev), ragged, float(ragged.lengths.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA where supported, else fp32")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if args.device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    torch.manual_seed(0)
    bb = Backbone.load(BackboneSpec(args.model, args.pretrained), device=args.device, precision=precision)
    dev = bb.placement.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ids, replaced, ragged, mean_len = batch_ids(bb, args.batch)
    with torch.no_grad():
        table = full_text(bb, ids)  # the feature cache's t of these captions
    checks = _parity(bb, ids, replaced, ragged)
    rates = {}
    for label, cached in (("lincir", None), ("cached_t_all_positions", table)):
        phi = Phi(bb.embed_dim, bb.token_width).to(dev).train()
        rates[label] = samples_per_s(lincir_step(bb, phi, ids, replaced, cached), args.batch, args.steps, sync)
    phi = Phi(bb.embed_dim, bb.token_width).to(dev).train()
    stepper = CaptionStep(bb, phi, phi, lincir_adamw(phi, 1e-4, 0.01), Dist())
    rows = torch.arange(args.batch)
    batch = lambda: CaptionBatch(table, bb.text_plan(ragged.gather(rows), with_star=True))  # noqa: E731
    rates["p2w"] = samples_per_s(lambda: stepper(1e-4, captions=batch()), args.batch, args.steps, sync)
    print(
        json.dumps(
            {
                "model": args.model,
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "precision": precision,
                "batch": args.batch,
                "steps": args.steps,
                "torch": torch.__version__,
                "replaced_mean_positions": round(mean_len, 1),
                "context": bb.context_length,
                **{f"{k}_samples_per_s": round(v, 1) for k, v in rates.items()},
                "speedup": round(rates["p2w"] / rates["lincir"], 2),
                **checks,
            }
        )
    )


def _parity(bb: Backbone, ids: torch.Tensor, replaced: torch.Tensor, ragged: Ragged) -> dict[str, float]:
    """fp32: the trimmed t against the 77-position t, and LinCIR's loss against p2w's on one batch."""
    place, bb.placement = bb.placement, type(bb.placement)(bb.placement.device, "fp32")
    try:
        phi = Phi(bb.embed_dim, bb.token_width).to(bb.placement.device).eval()
        with torch.no_grad():
            t77 = full_text(bb, ids)
            t_trim = bb.encode_text(ids)
            torch.manual_seed(1)
            ref = float(F.mse_loss(full_text(bb, replaced, phi(caption_noise(t77))), t77))
            torch.manual_seed(1)
            plan = bb.text_plan(ragged.gather(torch.arange(len(ids))), with_star=True)
            ours = float(lincir_loss(bb, phi, t77, plan))
    finally:
        bb.placement = place
    return {
        "t_max_abs_diff_trimmed_vs_77": float((t77 - t_trim).abs().max()),
        "loss_lincir_fp32": ref,
        "loss_p2w_fp32": ours,
        "loss_abs_diff_fp32": abs(ref - ours),
    }


if __name__ == "__main__":
    main()
