"""Re-make docs/images/serve.png, the page of ``p2w serve`` in the docs: the micro model on the demo gallery, a red
dress as the reference, "shirt" as the words, Pic2Word next to the average baseline.

    python tools/serve_screenshot.py                      # docs/images/serve.png, 1280x900
    python tools/serve_screenshot.py --size 390x844 --out /tmp/phone.png --full   # a phone, the whole page

It runs what a user would, in a throwaway P2W_HOME: ``p2w demo --out DIR`` (builds and indexes the gallery), then
``p2w serve --model p2w-micro-fashion``, and drives headless chromium (selenium with the system chromium and
chromedriver, as tests/test_serve_page.py does). The PNG is reduced to a 256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60  # seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    parser.add_argument("--size", default="1280x900", help="the viewport, WIDTHxHEIGHT CSS pixels")
    parser.add_argument("--text", default="shirt")
    parser.add_argument("--full", action="store_true", help="the whole page, not only the window")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    chromium, chromedriver = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        print("needs chromium and chromedriver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="p2w-screenshot-") as tmp:
        env = {**os.environ, "P2W_HOME": str(Path(tmp) / "home")}
        demo = Path(tmp) / "p2w-demo"
        subprocess.run(
            [sys.executable, "-m", "p2w", "demo", "--out", str(demo)], env=env, check=True, stdout=subprocess.DEVNULL
        )
        dresses = sorted((demo / "gallery").glob("dress-red-*.png"))
        if not dresses:
            print(f"no dress-red-*.png in {demo / 'gallery'}", file=sys.stderr)
            return 1
        server = subprocess.Popen(
            [sys.executable, "-m", "p2w", "serve", "--model", "p2w-micro-fashion", "--port", "0"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http://"):
                print(f"p2w serve did not start: {url!r}", file=sys.stderr)
                return 1
            png = shoot(chromium, chromedriver, url, dresses[0], args.text, width, height, args.full)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
            if server.stdout is not None:
                server.stdout.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out} ({image.width}x{image.height}, {args.out.stat().st_size // 1024} KiB)")
    return 0


def shoot(chromium: str, chromedriver: str, url: str, reference: Path, text: str, width: int, height: int,
          full: bool) -> bytes:  # fmt: skip
    """The PNG of the page at ``url`` after a composed search with ``reference`` and ``text``, with the baseline."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        view(driver, width, height)
        driver.get(url)
        wait = WebDriverWait(driver, WAIT)
        wait.until(lambda d: " photos" in d.find_element(By.ID, "about").text)
        driver.find_element(By.ID, "compare").click()
        driver.find_element(By.ID, "file").send_keys(str(reference))
        wait.until(lambda d: d.find_element(By.ID, "ref-label").text == reference.name)
        words = driver.find_element(By.ID, "text")
        words.send_keys(text)
        driver.find_element(By.ID, "search").click()
        wait.until(lambda d: d.execute_script(LOADED))
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        if not full:
            return driver.get_screenshot_as_png()
        view(driver, width, driver.execute_script("return document.documentElement.scrollHeight"))
        wait.until(lambda d: d.execute_script(LOADED))
        return driver.get_screenshot_as_png()
    finally:
        driver.quit()


def view(driver: Any, width: int, height: int) -> None:
    """A viewport of exactly ``width`` x ``height`` CSS pixels (a window's size counts its own chrome, and has a
    minimum width); a phone's (mobile, the page's viewport meta honoured) when narrow."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


# Two result columns, the search done, every thumbnail in view loaded.
LOADED = """
const results = document.getElementById('results');
if (results.getAttribute('aria-busy') === 'true' || results.querySelectorAll('.column').length !== 2) return false;
const shown = [...results.querySelectorAll('.hit img')].filter((i) => i.getBoundingClientRect().top < innerHeight);
return shown.length > 0 && shown.every((i) => i.complete && i.naturalWidth > 0);
"""


if __name__ == "__main__":
    sys.exit(main())
