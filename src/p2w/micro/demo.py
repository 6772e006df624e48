"""``p2w demo``: composed retrieval you can see, offline, with the embedded micro model (``p2w-micro-fashion``).

The demo gallery (held-out Fashion-MNIST items shipped with p2w, painted in eight colours) is written as PNG files,
indexed with the real ``p2w index`` path and searched with the real ``p2w search`` path, in Pic2Word mode and with
the three baselines; a contact sheet (PNG) shows each query next to each mode's top results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2w.core.compose import FUSIONS, MODES
from p2w.errors import P2WError
from p2w.micro import world as mw
from p2w.settings import Settings
from p2w.spec import BUILTIN_MODELS, BUILTIN_TAG, BackboneSpec, builtin_file

if TYPE_CHECKING:
    from p2w.library.index import IndexReport

MODEL = BUILTIN_MODELS[0]
SHOW = 5  # results per mode


@dataclass(frozen=True)
class DemoQuery:
    """A query: a gallery item (class, colour), the words, and what a right answer is."""

    label: int
    colour: int
    text: str
    template: str
    want_label: int
    want_colour: int
    same_item: bool  # colour edits ask for the very same item

    def describe(self) -> str:
        """E.g. ``"red dress + 'shirt'"``."""
        return f"{mw.COLOUR_NAMES[self.colour]} {mw.CLASSES[self.label]} + {self.text!r}"

    def wanted(self) -> str:
        """What a right answer is, e.g. ``"any red shirt"`` or ``"this very pullover, in purple"`` (a colour change
        asks for the same item: another item of that class and colour is not ticked)."""
        if self.same_item:
            return f"this very {mw.CLASSES[self.want_label]}, in {mw.COLOUR_NAMES[self.want_colour]}"
        return f"any {mw.COLOUR_NAMES[self.want_colour]} {mw.CLASSES[self.want_label]}"


# class changes keep the colour ("a * {text}"); colour changes keep the item ("a photo of * , in {text}.")
QUERIES = (
    DemoQuery(3, 0, "shirt", "a * {text}", 6, 0, False),  # red dress -> red shirts
    DemoQuery(7, 4, "sandal", "a * {text}", 5, 4, False),  # blue sneaker -> blue sandals
    DemoQuery(2, 3, "purple", "a photo of * , in {text}.", 2, 5, True),  # green pullover -> it, in purple
    DemoQuery(8, 2, "pink", "a photo of * , in {text}.", 8, 6, True),  # yellow bag -> it, in pink
)


@dataclass
class Result:
    """One mode's answer to one query: result paths and whether each is right."""

    mode: str
    paths: list[Path]
    right: list[bool]


@dataclass
class DemoRun:
    """What the demo did and found."""

    gallery: Path
    images: int
    query_paths: list[Path]
    indexed: IndexReport
    results: list[list[Result]] = field(default_factory=list)  # per query, per mode
    sheet: Path | None = None


def gallery_items() -> tuple[Any, Any, Any]:
    """The shipped demo items: grey images ``(n, 28, 28)``, classes ``(n,)`` and Fashion-MNIST test rows ``(n,)``."""
    import numpy as np

    path = builtin_file(MODEL, "demo.npz")
    try:
        with np.load(path) as data:
            return data["images"], data["labels"], data["rows"]
    except (OSError, KeyError, ValueError) as exc:
        raise P2WError(f"the demo gallery {path} is missing or damaged ({exc}); reinstall p2w") from exc


def image_name(label: int, colour: int, row: int) -> str:
    """Gallery file stem, e.g. ``"dress-red-01234"``: what it shows, readable in any file browser."""
    return f"{mw.CLASSES[label].replace(' ', '-')}-{mw.COLOUR_NAMES[colour]}-{row:05d}"


def parse_name(path: Path) -> tuple[int, int, int]:
    """``(class, colour, row)`` of a gallery file name."""
    *cls, colour, row = path.stem.split("-")
    return mw.CLASSES.index(" ".join(cls).replace("t shirt", "t-shirt")), mw.COLOUR_NAMES.index(colour), int(row)


def write_gallery(folder: Path) -> list[Path]:
    """Every demo item in every colour as PNG files in ``folder`` (existing identical files are kept)."""
    import numpy as np

    images, labels, rows = gallery_items()
    n, colours = len(labels), len(mw.COLOURS)
    item = np.repeat(np.arange(n), colours)
    colour = np.tile(np.arange(colours), n)
    names = [image_name(int(labels[i]), int(c), int(rows[i])) for i, c in zip(item, colour, strict=True)]
    wanted = [folder / f"{name}.png" for name in names]
    if all(p.is_file() for p in wanted):
        return wanted  # a re-run: files untouched, so the index has nothing to do
    return mw.save_images(mw.colourise(images[item], colour), folder, names)


def run(
    folder: Path,
    load_engine: Callable[[], Any],
    settings: Settings | None = None,
    progress: Any = None,
) -> DemoRun:
    """Write the gallery into ``folder/gallery``, index it, run every query in every mode, draw the contact sheet."""
    from p2w.core.dates import Where
    from p2w.library.index import index
    from p2w.library.search import open_catalog, search

    settings = settings or Settings.from_env()
    spec = BackboneSpec(MODEL, BUILTIN_TAG)
    gallery = folder / "gallery"
    try:
        paths = write_gallery(gallery)
    except OSError as exc:
        raise P2WError(f"cannot write the demo gallery into {gallery}: {exc.strerror or exc}; pass --out DIR") from exc
    loaded: list[Any] = []  # the engine, once: indexing loads it only if something needs embedding

    def engine_once() -> Any:
        if not loaded:
            loaded.append(load_engine())
        return loaded[0]

    report = index([gallery], spec, engine_once, settings, workers=0, progress=progress)
    engine = engine_once()
    by_key = {parse_name(p)[:2]: p for p in sorted(paths)}  # one file per (class, colour): the query images
    out = DemoRun(gallery, len(paths), [by_key[(q.label, q.colour)] for q in QUERIES], report)
    catalog = open_catalog(spec, settings)
    try:
        for q, qpath in zip(QUERIES, out.query_paths, strict=True):
            row = []
            _, _, qrow = parse_name(qpath)
            for mode in MODES:
                prompt = None if mode in FUSIONS else q.template  # the fusions: the words as written
                vec = engine.encode_query(qpath, q.text, mode=mode, prompt=prompt)
                found = search(catalog, vec, k=SHOW + 1, where=Where.parse(gallery))  # the demo's own photos only
                hits = [Path(h.path) for h in found if Path(h.path) != qpath][:SHOW]
                row.append(Result(mode, hits, [_right(q, qrow, h) for h in hits]))
            out.results.append(row)
    finally:
        catalog.close()
    try:
        out.sheet = contact_sheet(out, folder / "contact-sheet.png")
    except OSError as exc:
        raise P2WError(f"cannot write the contact sheet into {folder}: {exc.strerror or exc}") from exc
    return out


def _right(q: DemoQuery, qrow: int, hit: Path) -> bool:
    label, colour, row = parse_name(hit)
    return label == q.want_label and colour == q.want_colour and (row == qrow or not q.same_item)


def contact_sheet(run: DemoRun, path: Path, scale: int = 3) -> Path:
    """A PNG: per query, its image and words, then one row of top results per mode; right answers framed green."""
    from p2w.library.sheet import SheetRow, Tile
    from p2w.library.sheet import contact_sheet as draw

    rows: list[SheetRow] = []
    for q, qpath, results in zip(QUERIES, run.query_paths, run.results, strict=True):
        rows.append(SheetRow(["query", q.describe()], [Tile(qpath)]))
        for result in results:
            tiles = [Tile(hit, framed=right) for hit, right in zip(result.paths, result.right, strict=True)]
            rows.append(SheetRow([result.mode], [None, *tiles]))  # results start under the query's column
    return draw(rows, path, cell=mw.SIZE * scale)
