"""Safe image opening: clear reasons for files that are missing, not images, truncated or too large."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from p2w.errors import ImageError

ImageLike = Union[str, "os.PathLike[str]", Image.Image]
MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2x its warning threshold)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif")


def looks_like_image_path(value: str) -> bool:
    """True for strings that name an image file by their suffix, e.g. ``"shirt.jpg"``."""
    return Path(value).suffix.lower() in IMAGE_SUFFIXES


def open_image(source: ImageLike) -> Image.Image:
    """Open a path (or take a PIL image), apply EXIF orientation, return RGB; raise ``ImageError`` with a reason."""
    if isinstance(source, Image.Image):
        return _rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS}")
                im.seek(0)  # first frame of animations
                im.load()
                oriented = ImageOps.exif_transpose(im)
                return _rgb(oriented)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path} is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} cannot be decoded ({exc})") from None


def _rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")
