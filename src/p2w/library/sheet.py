"""Pictures of results: contact sheets (a PNG of labelled rows of tiles; ``p2w demo``, ``p2w search --sheet``) and
thumbnails (``p2w serve``, ``p2w search --preview``). PIL only: no model is needed to draw a result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2w.atomic import atomic_path
from p2w.core.images import ImageLike, open_image, to_rgb
from p2w.library.catalog import Hit

THUMB = 320  # longest side of a cached thumbnail, in pixels


@dataclass(frozen=True)
class Tile:
    """One picture of a sheet: a file, an optional caption under it, and a green frame for a right answer."""

    path: Path
    caption: str = ""
    framed: bool = False


@dataclass(frozen=True)
class SheetRow:
    """A row of a sheet: text lines at its left, then its tiles (None: an empty place)."""

    label: Sequence[str]
    tiles: Sequence[Tile | None] = field(default_factory=tuple)


def contact_sheet(rows: Sequence[SheetRow], path: Path, cell: int = 96, label_width: int = 150) -> Path:
    """Draw ``rows`` into a PNG at ``path`` (atomically): each tile fitted into a ``cell``-pixel square (small images
    enlarged without smoothing, so a 32-pixel item stays crisp), captions under tiles, right answers framed green."""
    from PIL import Image, ImageDraw

    pad, text_h = 6, 14
    captions = any(t.caption for r in rows for t in r.tiles if t is not None)
    row_h = cell + pad + (text_h if captions else 0)
    cols = max([len(r.tiles) for r in rows] or [1])
    sheet = Image.new("RGB", (label_width + cols * (cell + pad) + pad, len(rows) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = pad + r * row_h
        for i, line in enumerate(row.label):
            draw.text((pad, y + 2 + i * text_h), line, fill=(0, 0, 0))
        for j, tile in enumerate(row.tiles):
            if tile is None:
                continue
            x = label_width + j * (cell + pad)
            picture = _fit(tile.path, cell)
            sheet.paste(picture, (x + (cell - picture.width) // 2, y + (cell - picture.height) // 2))
            if tile.framed:
                draw.rectangle((x - 3, y - 3, x + cell + 2, y + cell + 2), outline=(0, 170, 0), width=3)
            if tile.caption:
                draw.text((x, y + cell + 1), tile.caption[: cell // 6], fill=(60, 60, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _fit(path: Path, cell: int) -> Any:
    from PIL import Image

    image = to_rgb(open_image(path, draft=cell))
    if max(image.size) <= cell:
        scale = cell // max(image.size)  # whole multiples: crisp pixels
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.thumbnail((cell, cell))
    return image


def thumbnail(source: ImageLike, target: Path, size: int = THUMB) -> Path:
    """A JPEG of ``source`` (a path, or an image already open) no larger than ``size`` pixels a side, written to
    ``target`` once (atomically)."""
    if not target.is_file():
        image = to_rgb(open_image(source, draft=size))
        image.thumbnail((size, size))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=85)
    return target


def search_sheet(
    hits: Sequence[Hit], path: Path, images: Sequence[Path] = (), words: str = "", per_row: int = 8, cell: int = 128
) -> Path:
    """A contact sheet of one search: the query (its images and words), then its results, ``per_row`` a row, each
    captioned with its rank and score (``p2w search --sheet``)."""
    rows = [SheetRow(["query", *([words] if words else [])], [Tile(i) for i in images])]
    tiles = [Tile(Path(h.path), f"{h.rank}. {h.score:.3f}") for h in hits]
    for i in range(0, len(tiles), per_row):
        rows.append(SheetRow(["results"] if i == 0 else [], tiles[i : i + per_row]))
    return contact_sheet(rows, path, cell=cell)
