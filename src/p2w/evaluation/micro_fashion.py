"""``micro-fashion``: composed retrieval in the colour world (``p2w.microworld``), p2w's own offline benchmark.

Held-out items: ``per_class`` seeded Fashion-MNIST *test* items of every class (none was seen in training). The
gallery is every held-out item in every one of the eight colours; each query's reference image is left out. Split
``test`` is the benchmark; ``val`` is built alike from the next ``per_class`` test items of each class in the same
seeded order (disjoint from ``test``'s), for choosing what ``test`` then measures (e.g. ``--alpha-sweep``).

- ``class-change``: item in colour c + a class name ("a red dress" + "shirt") -> items of that class in colour c.
  Prompt ``a * {text}``. Metric: P@10 / P@50, the fraction of the top k that has the asked class *and* colour c.
- ``colour-change``: item in colour c + a colour name ("this dress" + "blue") -> the same item in that colour.
  Prompt ``a photo of * , in {text}.``. Metric: R@1/10/50 of that single target.

Every query's reference colour and asked class or colour are seeded draws (``seed``), different from its own.
Baselines use the same filled prompt, as in the other benchmarks (``text`` reads ``*`` as a literal word); the
training-free fusions read the asked class or colour as written, as their authors' code reads the modifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from p2w.core.compose import FUSIONS, MODES, SLOT
from p2w.engine import Engine
from p2w.errors import P2WError
from p2w.evaluation import metrics as m
from p2w.evaluation.common import EvalResult, percent
from p2w.evaluation.driver import Query, QuerySet, Rules, query_set, run
from p2w.micro import world as mw
from p2w.progress import Progress

TASKS = {"class-change": "a * {text}", "colour-change": "a photo of * , in {text}."}
PER_CLASS = 100
TOP = 50


@dataclass(frozen=True)
class World:
    """The held-out gallery and the two tasks' queries (indices into the gallery)."""

    items: mw.Items  # held-out items
    names: list[str]  # gallery names "t01234-red": test-set index and colour
    item_of: np.ndarray  # (G,) held-out item row of each gallery image
    colour_of: np.ndarray  # (G,) colour index of each gallery image
    queries: dict[str, tuple[np.ndarray, list[str], np.ndarray]]  # task -> (reference gallery rows, texts, asked)

    def gallery_rgb(self) -> np.ndarray:
        """Every gallery image ``(G, 32, 32, 3)`` uint8."""
        return mw.colourise(self.items.images[self.item_of], self.colour_of)


SPLITS = ("test", "val")


def build_world(data: Path | None = None, per_class: int = PER_CLASS, seed: int = 0, split: str = "test") -> World:
    """The held-out items, gallery and queries of ``split`` (``SPLITS``), all seeded."""
    if split not in SPLITS:
        raise P2WError(f"micro-fashion has splits test (the benchmark) and val (other held-out items), not {split!r}")
    test = mw.load_items("test", data)
    val = split == "val"
    rows = mw.balanced_rows(test.labels, per_class, seed, skip=per_class if val else 0)
    items = test.subset(rows)
    n, colours = len(items), len(mw.COLOURS)
    item_of = np.repeat(np.arange(n), colours)
    colour_of = np.tile(np.arange(colours), n)
    names = [f"t{rows[i]:05d}-{mw.COLOUR_NAMES[c]}" for i, c in zip(item_of, colour_of, strict=True)]
    rng = np.random.default_rng((seed + 1, 1) if val else seed + 1)
    ref_colour = rng.integers(0, colours, size=n)
    refs = np.arange(n) * colours + ref_colour  # gallery row of each item's reference image
    new_class = (items.labels + rng.integers(1, len(mw.CLASSES), size=n)) % len(mw.CLASSES)
    new_colour = (ref_colour + rng.integers(1, colours, size=n)) % colours
    queries = {
        "class-change": (refs, [mw.CLASSES[k] for k in new_class], new_class),
        "colour-change": (refs, [mw.COLOUR_NAMES[c] for c in new_colour], new_colour),
    }
    return World(items, names, item_of, colour_of, queries)


def gallery_features(
    engine: Engine, world: World, batch_size: int = 256, progress: Progress | None = None
) -> np.ndarray:
    """Unnormalised features ``(G, dim)`` of the gallery, through the backbone's own preprocessing."""
    from PIL import Image

    rgb = world.gallery_rgb()
    out = []
    for i in range(0, len(rgb), batch_size):
        images = [Image.fromarray(a, "RGB") for a in rgb[i : i + batch_size]]
        out.append(engine.image_features(images).cpu().numpy())
        if progress:
            progress("features", min(i + batch_size, len(rgb)), len(rgb))
    return np.concatenate(out).astype(np.float32)


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when the Fashion-MNIST test files are not in ``data``."""
    mw.find_files("test", data)


def evaluate(
    engine: Engine,
    data: Path | None,
    home: Path | None = None,
    mode: str = "pic2word",
    alpha: float | None = None,
    alpha_sweep: bool = False,
    split: str = "test",
    per_class: int = PER_CLASS,
    seed: int = 0,
    batch_size: int = 256,
    progress: Progress | None = None,
    **_: object,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode, metrics grouped by task."""
    world = build_world(data, per_class, seed, split)
    images = dict(zip(world.names, gallery_features(engine, world, batch_size, progress), strict=True))
    sets = [_task(world, images, task, engine.backbone.embed_dim) for task in TASKS]
    rules = Rules("micro-fashion", partial(_score, world), grouped=True, top=_top)
    return run(engine, rules, split, mode, sets, alpha=alpha, sweep=alpha_sweep)


def _task(world: World, images: Mapping[str, np.ndarray], task: str, dim: int) -> QuerySet:
    """One task's queries against the whole gallery, each reference image left out of its own ranking."""
    refs, texts, asked = world.queries[task]
    names = [world.names[r] for r in refs]
    queries = [Query(n, (t,), int(a), exclude=n) for n, t, a in zip(names, texts, asked, strict=True)]
    templates = dict.fromkeys(MODES, TASKS[task]) | dict.fromkeys(FUSIONS, SLOT)  # the fusions: TEXT as written
    qs = query_set(task, templates, images, world.names, queries, dim)
    return replace(qs, missing={f"{task}_queries": 0})


def _order(scores: np.ndarray) -> np.ndarray:
    """The top gallery rows ``(Q, top)`` of each row of ``scores``, best first: every image but the reference, up to
    ``TOP``."""
    top = min(TOP, scores.shape[1] - 1)
    part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1, kind="stable"), 1)


def _top(scores: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """The names of ``_order``."""
    return [[names[j] for j in row] for row in _order(scores)]


def _score(world: World, scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """class-change: P@10/P@50 of the asked class in the reference's colour; colour-change: R@1/10/50 of the item
    in the asked colour."""
    refs, asked = qs.exclude, np.array(qs.truths())
    assert refs is not None, "every query leaves its reference out"
    if qs.name == "class-change":
        order = _order(scores)
        hit = world.items.labels[world.item_of[order]] == asked[:, None]
        hit &= world.colour_of[order] == world.colour_of[refs][:, None]
        return {f"P@{k}": 100 * float(hit[:, :k].mean()) for k in (10, 50)}
    target = world.item_of[refs] * len(mw.COLOURS) + asked
    return percent(m.recall_at(m.ranks_in(scores, target), (1, 10, 50)))
