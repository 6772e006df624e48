"""Safe image opening: clear reasons for files that are missing, not images, truncated or too large."""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from p2w.errors import ImageError, ImageTooLarge

ImageLike = Union[str, "os.PathLike[str]", Image.Image]
MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2x its warning threshold)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif")


# formats Pillow reads only with a plugin, and what to install where that plugin is missing
HEIF_HINT = "HEIC/HEIF photos need pillow-heif (a dependency of p2w): pip install pillow-heif"
PLUGINS = {".heic": HEIF_HINT, ".heif": HEIF_HINT, ".avif": "AVIF needs Pillow 11.3 or newer: pip install -U pillow"}


@functools.cache
def register_heif() -> bool:
    """Let Pillow read HEIC/HEIF (pillow-heif, a dependency of p2w), once, at the first image opened."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def looks_like_image_path(value: str) -> bool:
    """True for strings that name an image file by their suffix, e.g. ``"shirt.jpg"``."""
    return Path(value).suffix.lower() in IMAGE_SUFFIXES


def open_image(source: ImageLike, draft: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open a path (or take a PIL image) and apply EXIF orientation; raise ``ImageError`` with a reason.

    8-bit modes (RGB, RGBA, L, LA, P) are returned as stored: open_clip's transform converts them to RGB *after*
    resizing and cropping, exactly as the Pic2Word reference does. 16-bit, float and CMYK images (which that late
    conversion would clip) and palettes with transparency come back as 8-bit RGB.

    ``draft``: let JPEGs decode at a reduced scale (1/2, 1/4, 1/8) that keeps the shorter side >= ``draft`` pixels;
    much faster for photos larger than the model's input, and how JPEGs over the pixel limit are read at all.
    ``max_pixels``: larger images (after draft reduction) are refused before they are decoded (default
    ``MAX_PIXELS``, Pillow's hard limit; its warning at half of it does not apply).
    """
    if isinstance(source, Image.Image):
        return _rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    try:
        return _decode(path, str(path), draft, max_pixels or MAX_PIXELS)
    except FileNotFoundError as exc:
        raise ImageError(f"image not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path} is a directory, not an image") from exc
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied") from exc


def decode_image(
    data: bytes, name: str = "the upload", draft: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """``open_image`` for bytes in memory (an upload), e.g. ``decode_image(body, "query.jpg", draft=224)``: the same
    pixels as opening the same bytes from a file."""
    return _decode(io.BytesIO(data), name, draft, max_pixels or MAX_PIXELS)


def _decode(source: Path | io.BytesIO, name: str, draft: int | None, max_pixels: int) -> Image.Image:
    register_heif()
    try:
        with _open(source) as im:
            _reduce(im, name, draft, max_pixels)
            im.seek(0)  # first frame of animations
            im.load()
            return _rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image Pillow can read{_plugin_hint(name)}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name} is too large to decode safely ({str(exc).split(',')[0]})") from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} cannot be decoded ({exc})") from exc


def _open(source: Path | io.BytesIO) -> Image.Image:
    """``Image.open`` with p2w's pixel limit instead of Pillow's: Pillow warns above 89 Mpx and refuses above 179 Mpx
    when the file is opened, before a JPEG's draft decoding could shrink it; ``_reduce`` applies ``max_pixels`` to
    what will really be decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError:
            if not _is_jpeg(source):
                raise
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return JpegImagePlugin.JpegImageFile(source)  # the same decoder, without Pillow's check at open


def _is_jpeg(source: Path | io.BytesIO) -> bool:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:3] == b"\xff\xd8\xff"
    with open(source, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


def _plugin_hint(name: str) -> str:
    """What to install to read a file of this kind, when Pillow alone cannot."""
    hint = PLUGINS.get(os.path.splitext(name)[1].lower())
    if hint is None or (hint == HEIF_HINT and register_heif()):
        return ""  # the plugin is there: the file itself is not what its name says
    return f"; {hint}"


def _reduce(im: Image.Image, name: str, draft: int | None, max_pixels: int) -> None:
    """Use JPEG draft mode where allowed, then refuse what would still be over the pixel limit."""
    if im.format == "JPEG" and (draft or im.width * im.height > max_pixels):
        short = min(im.size)
        scale = 1
        while scale < 8 and ((draft and short // (scale * 2) >= draft) or im.width * im.height / scale**2 > max_pixels):
            scale *= 2
        if scale > 1:
            im.draft("RGB", (im.width // scale, im.height // scale))
    if im.width * im.height > max_pixels:
        raise ImageTooLarge(f"{name}: {im.width}x{im.height} pixels is over the limit of {max_pixels}")


LATE_CONVERSION = frozenset({"RGB", "RGBA", "L", "LA", "P"})


def _rgb(im: Image.Image) -> Image.Image:
    """The image for preprocessing: 8-bit modes as they are (see ``open_image``), others as 8-bit RGB."""
    if im.mode in LATE_CONVERSION and not (im.mode == "P" and "transparency" in im.info):
        return im
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and 32-bit greyscale are scaled, palettes with transparency go via RGBA."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        im = im.convert("I")
        extrema = im.getextrema()
        high = float(extrema[1]) if isinstance(extrema, tuple) and not isinstance(extrema[1], tuple) else 0.0
        im = im.point(lambda v: v / 257 if high > 255 else v).convert("L")  # 16-bit range -> 8-bit
    elif im.mode == "F":
        im = im.point(lambda v: max(0.0, min(255.0, v))).convert("L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def target_pad(image: Image.Image, ratio: float = 1.25) -> Image.Image:
    """SEARLE's evaluation padding ("targetpad"): an image whose longer side is at least ``ratio`` times its shorter
    gets black bands on its shorter sides until the ratio is about ``ratio``; others are returned as they are. The
    backbone's own resize and centre crop follow, so less of a long image is cropped away."""
    w, h = image.size
    if max(w, h) / max(1, min(w, h)) < ratio:
        return image
    side = max(w, h) / ratio
    hp, vp = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
    return ImageOps.expand(image, border=(hp, vp, hp, vp), fill=0)
