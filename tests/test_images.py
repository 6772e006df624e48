"""Image opening: orientation, modes, and a clear reason for every file that cannot be used."""

from __future__ import annotations

import pytest
from PIL import Image

from p2w.core import images
from p2w.core.images import open_image
from p2w.errors import ImageError


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert open_image(path).size == (20, 40)


def test_modes_and_gif_first_frame(tmp_path):
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(rgba)
    assert open_image(rgba).mode == "RGBA"  # converted after resizing, as the reference does
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    im = open_image(gif)
    assert im.size == (8, 8) and im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # the first frame
    sixteen = tmp_path / "16.png"
    Image.new("I;16", (8, 8), 40000).save(sixteen)
    assert open_image(sixteen).getpixel((0, 0)) == (155, 155, 155)  # scaled, not clipped to white
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(cmyk)
    assert open_image(cmyk).mode == "RGB"


def test_preprocessing_converts_late_like_the_reference(tiny_engine, tmp_path):
    """RGBA and palette images: p2w's pixels equal open_clip's transform on Image.open (the reference's order)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 255, (50, 70, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "rgba.png")
    rgba.convert("RGB").quantize(16).save(tmp_path / "pal.png")
    for name in ("rgba.png", "pal.png"):
        ours = tiny_engine._pixels([tmp_path / name])[0]
        reference = tiny_engine.backbone.preprocess(Image.open(tmp_path / name))
        torch.testing.assert_close(ours, reference, atol=0, rtol=0)


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


def test_a_100_megapixel_jpeg_is_read_at_the_documented_limit(tmp_path):
    """A 10000x10000 JPEG (a common camera size) was refused at Pillow's warning threshold (89,478,485 px), half the
    documented limit, because the warning was made an error inside Image.open, before the draft decode."""
    path = tmp_path / "camera.jpg"
    Image.new("L", (10_000, 10_000), 128).save(path, quality=50)
    assert open_image(path, draft=224).size == (1250, 1250)  # the draft decode shrinks it 8x
    assert open_image(path).size == (10_000, 10_000)  # under the limit: decoded whole


def test_a_jpeg_over_the_limit_is_read_through_its_draft_decode(tmp_path):
    """200 Mpx is over Pillow's hard limit (and p2w's): a JPEG is still read, decoded at a scale under the limit."""
    path = tmp_path / "panorama.jpg"
    Image.new("L", (20_000, 10_000), 128).save(path, quality=50)
    assert open_image(path, draft=224).size == (2500, 1250)
    assert open_image(path).size == (10_000, 5_000)  # halved: the largest scale under the limit
    png = tmp_path / "panorama.png"
    Image.new("1", (20_000, 10_000)).save(png)  # not a JPEG: no draft decode, refused before decoding
    with pytest.raises(images.ImageTooLarge, match="too large"):
        open_image(png)


def test_heic_photos_are_read(tmp_path, tiny):
    """iPhones write HEIC: a folder of them gave `0 photos, skipped 0`, and `p2w search x.heic` said "not an
    image"; pillow-heif is a dependency now."""
    import json

    import numpy as np
    from typer.testing import CliRunner

    from p2w.cli import app

    rng = np.random.default_rng(0)
    folder = tmp_path / "iphone"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"IMG_{i}.HEIC")
    assert open_image(folder / "IMG_0.HEIC").size == (64, 48)
    runner = CliRunner()
    tiny_args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]
    done = runner.invoke(app, ["index", str(folder), *tiny_args, "--workers", "0", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["added"] == 3, done.output
    found = runner.invoke(app, ["search", str(folder / "IMG_1.HEIC"), *tiny_args, "--json", "-k", "1"])
    assert found.exit_code == 0 and json.loads(found.stdout)[0]["path"].endswith("IMG_1.HEIC"), found.output


def test_a_format_that_needs_a_plugin_says_which(tmp_path):
    fake = tmp_path / "x.heic"
    fake.write_bytes(b"not a heic file at all")
    with pytest.raises(ImageError, match=r"not an image Pillow can read$"):
        open_image(fake)  # the plugin is there: the file is not what its name says
    assert images._plugin_hint("x.avif") in ("", "; AVIF needs Pillow 11.3 or newer: pip install -U pillow")
