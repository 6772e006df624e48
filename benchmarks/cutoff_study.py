"""Which score-cutoff rule best separates relevant from irrelevant results of a search, across queries (micro world).

    python benchmarks/cutoff_study.py --seeds 0 1 --k 50 --out /tmp/cutoff_study.json

The embedded micro model (``p2w-micro-fashion``) and its shipped mapper, on the two ``micro-fashion`` tasks
(class-change, colour-change) in every mode: one score matrix ``(Q, G)`` per task and mode, computed as ``p2w eval
micro-fashion`` does (the reference image left out), and each query's top ``--k`` (best first) with its relevance
(class-change: the asked class in the reference's colour; colour-change: the one target). A rule maps one query's
top-k scores s[0] >= s[1] >= ... to how many of them to keep (at least 1):

- none: all k (what a search returns today)           - flat(t): s >= t
- margin(m): s >= s[0] - m                             - ratio(r): s >= r * s[0]
- drop(g): up to the first gap s[i] - s[i+1] > g       - zscore(z): s >= mean + z * std of the top k

Per query precision = relevant kept / kept and recall = relevant kept / min(relevant, k); macro means per group, F1
of the two means; gF1: the mean of the 8 task x mode F1s. Each rule's one parameter is tuned on the world of the first
seed for the best F1 of all tasks and modes pooled (``--objective gF1``: the best gF1), one default for everything,
and reported on the second seed's world (held out). ``oracle flat`` tunes a flat threshold per task and mode on the
test world itself: per group (and so for gF1, not for pooled F1) the upper bound of a flat threshold.
Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import p2w
from p2w.core.compose import MODES
from p2w.engine import Engine
from p2w.evaluation import driver
from p2w.evaluation import metrics as m
from p2w.evaluation.common import template_for
from p2w.evaluation.micro_fashion import PER_CLASS, TASKS, World, _task, build_world, gallery_features
from p2w.micro import world as mw
from p2w.settings import Settings

Group = tuple[np.ndarray, np.ndarray, np.ndarray]  # top-k scores (Q, k), relevance (Q, k), min(relevant, k) (Q,)
Rule = Callable[[np.ndarray, float], np.ndarray]  # (top-k scores (Q, k), parameter) -> kept (Q,)
GRID = 200


def _count(keep: np.ndarray) -> np.ndarray:
    return np.maximum(keep.sum(1), 1)


def _drop(s: np.ndarray, g: float) -> np.ndarray:
    big = (s[:, :-1] - s[:, 1:]) > g
    return np.where(big.any(1), big.argmax(1) + 1, s.shape[1])


def _first_gap(gaps: np.ndarray, limit: np.ndarray) -> np.ndarray:
    big = gaps > limit
    return np.where(big.any(1), big.argmax(1) + 1, gaps.shape[1] + 1)


def _jump(s: np.ndarray, c: float) -> np.ndarray:
    """Up to the first gap over ``c`` times the list's median gap (scale-free)."""
    gaps = s[:, :-1] - s[:, 1:]
    return _first_gap(gaps, c * np.maximum(np.median(gaps, 1, keepdims=True), 1e-9))


def _share(s: np.ndarray, f: float) -> np.ndarray:
    """Up to the first gap over the share ``f`` of the list's spread s[0] - s[-1] (scale-free)."""
    return _first_gap(s[:, :-1] - s[:, 1:], f * np.maximum(s[:, :1] - s[:, -1:], 1e-9))


RULES: dict[str, Rule] = {
    "none": lambda s, _: np.full(len(s), s.shape[1]),
    "flat": lambda s, t: _count(s >= t),
    "margin": lambda s, g: _count(s >= s[:, :1] - g),
    "ratio": lambda s, r: _count(s >= r * s[:, :1]),
    "drop": _drop,
    "jump": _jump,
    "share": _share,
    "zscore": lambda s, z: _count(s >= s.mean(1, keepdims=True) + z * s.std(1, keepdims=True)),
}


def grid(rule: str, s: np.ndarray) -> np.ndarray:
    """``GRID`` parameters spanning what ``rule`` sees in the top-k scores ``s`` (all groups stacked)."""
    if rule == "none":
        return np.zeros(1)
    gaps = s[:, :-1] - s[:, 1:]
    if rule == "jump":
        ratio = gaps / np.maximum(np.median(gaps, 1, keepdims=True), 1e-9)
        return np.geomspace(1.0, max(float(ratio.max()), 1.01), GRID)
    if rule == "share":
        return np.linspace(0.0, 1.0, GRID)
    seen = {
        "flat": s,
        "margin": s[:, :1] - s,
        "ratio": s / np.where(np.abs(s[:, :1]) > 1e-6, s[:, :1], 1e-6),
        "drop": s[:, :-1] - s[:, 1:],
        "zscore": (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-9),
    }[rule]
    return np.linspace(float(seen.min()), float(seen.max()), GRID)


def measure(kept: np.ndarray, rel: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per-query precision and recall ``(Q, 2)`` of keeping the first ``kept`` of each row."""
    hits = np.cumsum(rel, 1)[np.arange(len(rel)), kept - 1]
    return np.stack([hits / kept, hits / np.maximum(total, 1)], 1)


def summary(pr: np.ndarray, kept: np.ndarray) -> dict[str, float]:
    p, r = (float(v) for v in pr.mean(0))
    return {"P": p, "R": r, "F1": 2 * p * r / (p + r) if p + r else 0.0, "kept": float(kept.mean())}


def evaluate(rule: str, param: float, groups: dict[str, Group]) -> dict[str, dict[str, float]]:
    """Per group and ``pooled`` (every query of every group) P/R/F1 and mean kept of ``rule`` at ``param``; pooled
    ``gF1``: the mean of the groups' F1."""
    out, prs, keeps = {}, [], []
    for name, (s, rel, total) in groups.items():
        kept = RULES[rule](s, param)
        prs.append(measure(kept, rel, total))
        keeps.append(kept)
        out[name] = summary(prs[-1], kept)
    out["pooled"] = summary(np.concatenate(prs), np.concatenate(keeps))
    out["pooled"]["gF1"] = float(np.mean([out[n]["F1"] for n in groups]))
    return out


def tune(rule: str, groups: dict[str, Group], objective: str = "F1") -> tuple[float, float]:
    """The parameter of the best pooled ``objective`` (F1 or gF1) on ``groups`` and that value."""
    s = np.concatenate([g[0] for g in groups.values()])
    f1 = [(evaluate(rule, float(p), groups)["pooled"][objective], float(p)) for p in grid(rule, s)]
    best, param = max(f1, key=lambda x: x[0])  # ties: the first (smallest) parameter
    return param, best


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` gallery rows ``(Q, k)`` of each row of ``scores``, best first (the reference, at -inf, is last)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1, kind="stable"), 1)


def relevance(
    world: World, task: str, order: np.ndarray, refs: np.ndarray, asked: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Relevance ``(Q, k)`` of the ranked rows ``order`` and each query's number of relevant gallery items."""
    if task == "class-change":
        colour = world.colour_of[refs]
        rel = (world.items.labels[world.item_of[order]] == asked[:, None]) & (world.colour_of[order] == colour[:, None])
        label = world.items.labels[world.item_of]  # (G,)
        total = ((label[None] == asked[:, None]) & (world.colour_of[None] == colour[:, None])).sum(1)
        total -= label[refs] == asked  # the reference (left out) never is: its class differs from the asked one
        return rel, total
    target = world.item_of[refs] * len(mw.COLOURS) + asked
    return order == target[:, None], np.ones(len(refs), dtype=np.int64)


def groups_of(
    engine: Engine, data: Path | None, per_class: int, seed: int, k: int, modes: list[str]
) -> dict[str, Group]:
    """``"task/mode"`` -> (top-k scores, relevance, min(relevant, k)) on the world of ``seed``."""
    world = build_world(data, per_class, seed)
    images = dict(zip(world.names, gallery_features(engine, world), strict=True))
    out = {}
    for task in TASKS:
        qs = _task(world, images, task, engine.backbone.embed_dim)
        assert qs.exclude is not None and len(qs.gallery) == len(world.names)
        asked = np.array(qs.truths())
        for mode in modes:
            template = template_for(engine, "micro-fashion", mode, qs.templates[mode])  # as driver._rank does
            scores = m.score_matrix(driver._vectors(engine, mode, template, qs), qs.vectors, qs.exclude)
            order = top_k(scores, k)
            rel, total = relevance(world, task, order, qs.exclude, asked)
            out[f"{task}/{mode}"] = (np.take_along_axis(scores, order, 1), rel, np.minimum(total, k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1], metavar=("TUNE", "TEST"))
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--data", type=Path, default=None, help=f"Fashion-MNIST folder (default {mw.DEFAULT_DATA})")
    ap.add_argument("--objective", choices=["F1", "gF1"], default="F1", help="tune for pooled F1 or mean group F1")
    ap.add_argument("--jump", type=float, default=None, help="also the jump rule at this factor, untuned")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the query modes measured")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cutoff_study.json"))
    args = ap.parse_args()
    start = time.perf_counter()
    engine = p2w.load("p2w-micro-fashion", mapper="default", device="cpu", settings=Settings.from_env())
    tune_set, test_set = (groups_of(engine, args.data, args.per_class, s, args.k, args.modes) for s in args.seeds)
    names = list(test_set)
    results: dict[str, dict] = {}
    for rule in RULES:
        param, tuned_f1 = tune(rule, {n: tune_set[n] for n in names}, args.objective)
        results[rule] = {"param": param, "tune_F1": tuned_f1, "test": evaluate(rule, param, test_set)}
    if args.jump is not None:  # p2w's default (p2w.core.cutoff.DROP), not tuned here
        tuned = evaluate("jump", args.jump, {n: tune_set[n] for n in names})["pooled"][args.objective]
        results["jump (p2w)"] = {"param": args.jump, "tune_F1": tuned, "test": evaluate("jump", args.jump, test_set)}
    oracle: dict[str, dict] = {"param": {}, "test": {}}
    prs, keeps = [], []
    for n in names:
        t, _ = tune("flat", {n: test_set[n]})
        s, rel, total = test_set[n]
        kept = RULES["flat"](s, t)
        prs.append(measure(kept, rel, total))
        keeps.append(kept)
        oracle["param"][n], oracle["test"][n] = t, summary(prs[-1], kept)
    oracle["test"]["pooled"] = summary(np.concatenate(prs), np.concatenate(keeps))
    oracle["test"]["pooled"]["gF1"] = float(np.mean([oracle["test"][n]["F1"] for n in names]))
    results["oracle flat"] = oracle
    elapsed = time.perf_counter() - start

    short = [n.replace("class-change", "cls").replace("colour-change", "col") for n in names]
    print(f"## cutoff rules, tuned on seed {args.seeds[0]}, tested on seed {args.seeds[1]}")
    print(f"k={args.k}, per_class={args.per_class}, queries per task={len(test_set[names[0]][0])}\n")
    print(
        f"| rule | param | tune {args.objective} | P | R | F1 | gF1 | kept | "
        + " | ".join(f"{s} F1" for s in short)
        + " |"
    )
    print("|---" * (8 + len(names)) + "|")
    for rule, res in results.items():
        pooled = res["test"]["pooled"]
        param = "per group" if rule == "oracle flat" else f"{res['param']:.4f}"
        tuned = "-" if rule == "oracle flat" else f"{res['tune_F1']:.3f}"
        cells = [f"{res['test'][n]['F1']:.3f}" for n in names]
        row = [
            rule,
            param,
            tuned,
            *(f"{pooled[x]:.3f}" for x in ("P", "R", "F1", "gF1")),
            f"{pooled['kept']:.1f}",
            *cells,
        ]
        print("| " + " | ".join(row) + " |")
    real = [r for r in results if r != "oracle flat"]
    print()
    for n, key in [("pooled", "F1"), ("pooled", "gF1"), *((n, "F1") for n in names)]:
        best = max(results[r]["test"][n][key] for r in real)
        ties = [r for r in real if results[r]["test"][n][key] >= best - 5e-4]
        print(f"best {n} {key}: {', '.join(ties)} ({best:.3f})")
    print("oracle flat thresholds: " + ", ".join(f"{n}={t:.4f}" for n, t in oracle["param"].items()))
    stats = {
        n: {"s0": float(s[:, 0].mean()), "sk": float(s[:, -1].mean()), "relevant": float(total.mean())}
        for n, (s, _, total) in test_set.items()
    }
    print(f"elapsed {elapsed:.1f} s")
    report = {"args": {**vars(args), "data": str(args.data), "out": str(args.out)}, "elapsed_s": elapsed}
    args.out.write_text(json.dumps({**report, "score_stats_test": stats, "results": results}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
