"""What composes best in the micro world: every query mode against every mapper, with alpha sweeps, on
``p2w eval micro-fashion``'s protocol (docs/microworld.md, "Training-free composition").

    python tools/microworld/fusion_study.py --out build/fusion-study \\
        --mapper shipped=builtin --mapper caption-s0=build/mw-s0/home/mappers/caption.safetensors ...
    python tools/microworld/fusion_study.py --out build/fusion-clip-s1 --model build/mw-clip-s1/ship/model.json \\
        --pretrained build/mw-clip-s1/ship/model.safetensors --mapper images=build/mw-clip-s1/ship/mapper.safetensors

For each split (``val``: the next 100 held-out items per class, for choosing; ``test``: the benchmark) and task, one
score matrix per row below, scored by the benchmark's own metric code (``micro_fashion._score``):

- ``image``, ``text``, ``average``: as ``p2w eval`` computes them (the task's prompt, ``*`` read as a word);
- ``slerp`` and ``weighted`` at every alpha of ``SWEEP``, with the words as written (``{text}``: the authors' text,
  p2w's default) and in the task's prompt (``tmpl``: the text the average reads);
- per mapper: ``pic2word``, and two compositions of the families: ``img>p2w`` (slerp from the image to the
  pic2word vector) and ``p2w>txt`` (slerp from the pic2word vector to the words' vector), at every alpha;
- the two-image task (class of image A, colour of image B; ``methods.two_image``'s queries): per mapper
  ``pic2word`` with the ``* *`` prompt and ``pic2word-slerp`` (``img>p2w``: from the images' unit sum to that vector)
  at every alpha, and ``slerp`` from A to B at every alpha (the task has no words for slerp and weighted to weigh).

Alpha is chosen on ``val`` (the best mean of class-change P@10 and colour-change R@10) and reported on ``test``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import p2w
from p2w.core.compose import QueryPlan, fill
from p2w.core.fusion import fuse, slerp
from p2w.evaluation import metrics as m
from p2w.evaluation import micro_fashion as mf
from p2w.evaluation.common import SWEEP, l2n, query_vectors, text_features
from p2w.spec import builtin_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import COLUMNS, two_image

HEAD = (("class-change", "P@10"), ("colour-change", "R@10"))


def unit(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(l2n(x))


def arc(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The slerp ``t`` of the way from ``a``'s direction to ``b``'s."""
    return slerp(unit(a), unit(b), t).numpy()


def task_rows(engines: dict[str, p2w.Engine], world: mf.World, feats: np.ndarray, task: str) -> dict:
    """Every row's metrics on one task: ``{row: {alpha or "-": metrics}}``."""
    engine = next(iter(engines.values()))
    images = dict(zip(world.names, feats, strict=True))
    qs = mf._task(world, images, task, feats.shape[1])
    refs, words = qs.refs, [q.texts[0] for q in qs.queries]
    assert refs is not None
    template = mf.TASKS[task]

    def score(q: np.ndarray) -> dict[str, float]:
        return mf._score(world, m.score_matrix(l2n(q), qs.vectors, qs.exclude), [], qs)

    texts = {
        "{text}": text_features(engine, list(words)),
        "tmpl": text_features(engine, [fill(template, w, "text") for w in words]),
    }
    out: dict[str, dict] = {
        "image": {"-": score(refs)},
        "text": {"-": score(texts["tmpl"])},
        "average": {"-": score((unit(refs) + unit(texts["tmpl"])).numpy())},
    }
    for mode in ("slerp", "weighted"):
        for name, text in texts.items():
            rows = {}
            for a in SWEEP:
                rows[a] = score(fuse(mode, a, torch.from_numpy(refs), torch.from_numpy(text)).numpy())
            out[f"{mode} [{name}]"] = rows
    for label, eng in engines.items():
        composed = query_vectors(eng, QueryPlan("pic2word", template), refs, words)
        out[f"pic2word ({label})"] = {"-": score(composed)}
        out[f"img>p2w ({label})"] = {a: score(arc(refs, composed, a)) for a in SWEEP}
        out[f"p2w>txt ({label})"] = {a: score(arc(composed, texts["{text}"], a)) for a in SWEEP}
    return out


def two_image_rows(engines: dict[str, p2w.Engine], world: mf.World, feats: np.ndarray) -> dict:
    """The two-image task: per mapper pic2word (``* *``: B's colour, then A's class) and pic2word-slerp from the
    images' unit sum to that vector, at every alpha; and slerp from A to B (the task has no words to weigh)."""
    out: dict[str, dict] = {}
    for i, (label, eng) in enumerate(engines.items()):
        extra = {("p2w-slerp", a): _two_slerp(eng, a) for a in SWEEP}
        if i == 0:
            extra |= {("A>B", a): (lambda fa, fb, a=a: arc(fa, fb, a)) for a in SWEEP}
        rows = two_image(eng, world, feats, baselines=False, extra=extra)
        out[f"pic2word ({label})"] = {"-": rows["pic2word: * *"]}
        out[f"img>p2w ({label})"] = {a: rows[("p2w-slerp", a)] for a in SWEEP}
        if i == 0:
            out["slerp A>B"] = {a: rows[("A>B", a)] for a in SWEEP}
    return out


def _two_slerp(engine: p2w.Engine, a: float):
    """pic2word-slerp of images B and A with the prompt ``* *`` (``Engine.compose``, the mode itself)."""

    def make(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([fb, fa], 1))
        with torch.inference_mode():
            return engine.compose(QueryPlan("pic2word-slerp", "* *", a), x, ["* *"] * len(fa)).float().numpy()

    return make


def choose(val: dict) -> dict[str, object]:
    """Per swept row: the alpha of the best mean of the two headline metrics on val, and each task's own best."""
    chosen: dict[str, object] = {}
    for row, by_alpha in val["class-change"].items():
        if "-" in by_alpha:
            continue
        both = {a: np.mean([val[t][row][a][k] for t, k in HEAD]) for a in by_alpha}
        chosen[row] = {
            "both": max(both, key=lambda a: (both[a], -abs(a - 0.5))),
            "class": max(by_alpha, key=lambda a: val["class-change"][row][a]["P@10"]),
            "colour": max(by_alpha, key=lambda a: val["colour-change"][row][a]["R@10"]),
        }
    return chosen


def table(results: dict, label: str = "") -> list[str]:
    """Markdown rows of the test split: each swept row at the alpha chosen on val (``both``), the two-image task's
    P@10 / R@10 where the row has one (its alpha chosen on val's two-image P@10)."""
    test, val, chosen = results["test"], results["val"], results["chosen"]
    lines = []
    for row, by_alpha in test["class-change"].items():
        a = "-" if "-" in by_alpha else chosen[row]["both"]
        cells = [f"{test[t][row][str(a) if a != '-' else a][k]:.2f}" for t, k in COLUMNS]
        two = ""
        if row in test["two-image"]:
            sweep = val["two-image"][row]
            b = "-" if "-" in sweep else max(sweep, key=lambda x: sweep[x]["P@10"])
            got = test["two-image"][row][b]
            two = f"{got['P@10']:.2f} / {got['R@10']:.2f}" + ("" if b == "-" else f" (a={b})")
        lines.append(f"| {label}{row} | {'' if a == '-' else a} | " + " | ".join(cells) + f" | {two} |")
    for row, sweep in test["two-image"].items():
        if row not in test["class-change"]:
            b = max(val["two-image"][row], key=lambda x: val["two-image"][row][x]["P@10"])
            got = sweep[b]
            empty = " | ".join("" for _ in COLUMNS)
            lines.append(f"| {label}{row} | | {empty} | {got['P@10']:.2f} / {got['R@10']:.2f} (a={b}) |")
    return lines


def sweep_table(results: dict, rows: list[str], alphas: list[str]) -> list[str]:
    """class-change P@10 / colour-change R@10 of ``rows`` on test at each of ``alphas``."""
    test = results["test"]
    lines = ["| mode | " + " | ".join(f"a={a}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for row in rows:
        cells = [
            f"{test['class-change'][row][a]['P@10']:.1f} / {test['colour-change'][row][a]['R@10']:.1f}" for a in alphas
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/fusion-study"))
    ap.add_argument("--model", default="p2w-micro-fashion")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--mapper", action="append", default=[], help="LABEL=FILE (FILE 'builtin': the shipped one)")
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's seed (items and queries)")
    ap.add_argument("--table", type=Path, nargs="+", help="print the docs' tables of these study.json files, and stop")
    args = ap.parse_args()
    if args.table:
        for path in args.table:
            results = json.loads(path.read_text())
            print("\n".join(table(results, f"{path.parent.name}: " if len(args.table) > 1 else "")))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    engines = {}
    for spec in args.mapper:
        label, _, path = spec.partition("=")
        path = str(builtin_file("p2w-micro-fashion", "mapper.safetensors")) if path == "builtin" else path
        engines[label] = p2w.load(args.model, args.pretrained, mapper=path, device="cpu")
    results: dict[str, dict] = {}
    for split in ("val", "test"):
        start = time.perf_counter()
        world = mf.build_world(args.data, mf.PER_CLASS, args.seed, split)
        feats = mf.gallery_features(next(iter(engines.values())), world)
        results[split] = {task: task_rows(engines, world, feats, task) for task in mf.TASKS}
        results[split]["two-image"] = two_image_rows(engines, world, feats)
        print(f"{split}: {time.perf_counter() - start:.0f} s", flush=True)
    results["chosen"] = choose(results["val"])
    (args.out / "study.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results["chosen"], indent=1))


if __name__ == "__main__":
    main()
