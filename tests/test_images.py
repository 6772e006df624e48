"""Image opening: orientation, modes, and a clear reason for every file that cannot be used."""

from __future__ import annotations

import pytest
from PIL import Image

from p2w import images
from p2w.errors import ImageError
from p2w.images import open_image


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert open_image(path).size == (20, 40)


def test_modes_become_rgb_and_gif_first_frame(tmp_path):
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(rgba)
    assert open_image(rgba).mode == "RGB"
    gif = tmp_path / "anim.gif"
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    im = open_image(gif)
    assert im.mode == "RGB" and im.size == (8, 8)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "not an image"), (b"hello, I am text", "not an image")],
)
def test_not_images(tmp_path, content, match):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        open_image(path)


def test_truncated_missing_and_directory(tmp_path):
    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="cannot be decoded"):
        open_image(cut)
    with pytest.raises(ImageError, match="image not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        open_image(tmp_path)


def test_pixel_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(ImageError, match="over the limit"):
        open_image(path)
