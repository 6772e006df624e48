"""Methods in the micro world (docs/microworld.md, "Methods in the micro world"): a mapper trained on the world's
captions alone (LinCIR's objective, no image read) composes on the shipped micro CLIP.

Asserts only what held on both training seeds of tools/microworld/methods.py; skips without Fashion-MNIST.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2w.cli import app
from p2w.micro import world as mw

MODEL = "p2w-micro-fashion"
runner = CliRunner()
needs_fmnist = pytest.mark.skipif(
    not (mw.DEFAULT_DATA / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {mw.DEFAULT_DATA} (apt-get install dataset-fashion-mnist)",
)
STEPS, BATCH = 150, 64  # docs/microworld.md: a short run on the 720 captions


@needs_fmnist
@pytest.mark.slow
def test_a_caption_trained_mapper_composes(tmp_path: Path) -> None:
    """`p2w train --captions` on the world's captions, then class change with the new mapper: far above image only
    and text only (the caption-trained mapper never saw an image)."""
    import p2w
    from p2w.evaluation import micro_fashion as mf

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(mw.all_captions()) + "\n")
    args = ["train", "--captions", str(captions), "--model", MODEL, "--name", "ci-captions", "--keywords", "rule"]
    args += ["--max-steps", str(STEPS), "--batch-size", str(BATCH), "--warmup", "10", "--seed", "0"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["objective"], summary["images"], summary["captions"]) == ("lincir", 0, 720)
    engine = p2w.load(MODEL, mapper="ci-captions", device="cpu")
    assert engine.mapper_file is not None and engine.mapper_file.method.name == "lincir"
    results = {r.mode: r.metrics for r in mf.evaluate(engine, None, mode="all", per_class=50)}
    p10 = {mode: metrics["class-change"]["P@10"] for mode, metrics in results.items()}
    assert p10["pic2word"] >= max(p10["image"], p10["text"]) + 40, p10
    assert p10["pic2word"] >= p10["average"], p10
