"""Train the micro CLIP of the colour world from scratch (CPU is fine: ~12 minutes on 2 cores).

    python tools/microworld/train_clip.py --out build/microworld [--steps 600] [--batch 256] [--seed 0]

Writes ``OUT/clip.safetensors`` (fp32, every parameter) and ``OUT/clip.json`` (the run's settings and loss curve).
A step: a batch of random Fashion-MNIST training items, each in a random colour with a random caption template,
under CLIP's symmetric contrastive loss; AdamW, linear warmup then cosine decay, all step-based and seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from p2w.micro import world as mw

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "micro_fashion.json"


def build_model(config: Path = CONFIG) -> tuple[torch.nn.Module, object]:
    """A randomly initialised open_clip model and tokenizer of ``config``."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "open_clip_config.json").write_text(config.read_text())
        model = open_clip.create_model(f"local-dir:{tmp}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp}")
    return model, tokenizer


def caption_table(tokenizer: object, partial: bool = True) -> tuple[torch.Tensor, int]:
    """Token ids of every caption, in ``mw.all_captions`` order ``(classes*colours*templates, ctx)``."""
    n_templates = len(mw.CAPTIONS) + (len(mw.PARTIAL_CAPTIONS) if partial else 0)
    return tokenizer(mw.all_captions(partial)), n_templates  # type: ignore[operator]


def lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--captions", choices=("full", "partial"), default="partial", help="full: colour+class captions only"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    items = mw.load_items("train", args.data)
    model, tokenizer = build_model()
    model.train()
    table, n_templates = caption_table(tokenizer, partial=args.captions == "partial")
    cfg = json.loads(CONFIG.read_text())["preprocess_cfg"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        rows = rng.choice(len(items), size=args.batch, replace=False)
        colours = rng.integers(0, len(mw.COLOURS), size=args.batch)
        templates = rng.integers(0, n_templates, size=args.batch)
        labels = items.labels[rows]
        ids = table[torch.from_numpy((labels * len(mw.COLOURS) + colours) * n_templates + templates)]
        image = mw.pixels(mw.colourise(items.images[rows], colours), cfg["mean"], cfg["std"])
        img, txt, scale = model(image, ids)[:3]
        logits = scale * img @ txt.T
        # plain CLIP targets (the diagonal), although captions repeat within a batch: a repeated caption's other
        # images are pushed away a little, which keeps item detail in the image features (Pic2Word needs it)
        target = torch.arange(len(rows))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            rate = (step + 1) / (time.perf_counter() - start)
            print(f"step {step:4d}  loss {loss.item():.4f}  scale {scale.item():.1f}  {rate:.2f} steps/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "clip.safetensors"))
    record = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "captions": args.captions,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "losses": losses,
    }
    (args.out / "clip.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'clip.safetensors'} in {record['seconds']} s")


if __name__ == "__main__":
    main()
