"""The page of `p2w serve` in a real headless browser (selenium driving the system chromium) against a real server
process over a small catalog: pick an image, type words, search, refine by clicking a result (with the mouse and the
keyboard), compare with the average baseline, keep to a folder, take a dropped or pasted image, survive an unreadable
upload, fit a phone's screen, and say plainly when there is no catalog or no mapper. Any JavaScript error, CSP
violation or failed request the test did not ask for fails the test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from media import item, write_video
from p2w.cli import app
from p2w.core.compose import DEFAULT_ALPHA
from p2w.core.cutoff import DROP, before_drop
from serving import Running, backbone_args, make_photos, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver import ActionChains  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT = 20  # seconds any one thing on the page may take (a search on 2 busy CPU cores is well under one)

# Collected in the page before its own script runs (CDP bypasses the page's CSP, as it should for a probe).
PROBE = """
window.__p2wErrors = [];
window.addEventListener('error', (e) => window.__p2wErrors.push('error: ' + (e.message || e.target && e.target.src)),
                        true);
window.addEventListener('unhandledrejection', (e) => window.__p2wErrors.push('rejection: ' + e.reason));
window.__p2wSearches = [];  // the bodies of the page's searches
const pageFetch = window.fetch;
window.fetch = (url, options) => {
  if (String(url).endsWith('/api/search') && options && typeof options.body === 'string') {
    window.__p2wSearches.push(JSON.parse(options.body));
  }
  return pageFetch(url, options);
};
document.addEventListener('securitypolicyviolation',
                          (e) => window.__p2wErrors.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));
"""

# The page's state, read in one go (no stale elements while the results are re-rendered).
STATE = """
if (!document.getElementById('results')) return {busy: true, columns: [], ref: '', message: '', about: '',
                                                  page: document.body ? document.body.textContent : ''};
const hits = [...document.querySelectorAll('#results .column')].map((c) => ({
  title: c.querySelector('h2').textContent,
  paths: [...c.querySelectorAll('.hit .path')].map((p) => p.textContent),
  images: [...c.querySelectorAll('.hit img')].map((i) => i.complete && i.naturalWidth > 0),
}));
const message = document.getElementById('message');
return {
  busy: document.getElementById('results').getAttribute('aria-busy') === 'true',
  columns: hits,
  ref: document.getElementById('ref-label').textContent,
  message: message.hidden ? '' : message.textContent,
  about: document.getElementById('about').textContent,
};
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> Iterator[Running]:
    """A real `p2w serve` (tiny model and mapper) over 31 indexed photos (one a byte copy of another, in copies/),
    for the whole module."""
    root = tmp_path_factory.mktemp("page")
    home, photos = root / "home", root / "photos"
    for year, seed in ((2024, 0), (2025, 1)):  # taken (by their files' time) in June of their folder's year
        stamp = datetime(year, 6, 1, 12).timestamp()
        for path in make_photos(photos / str(year), 15, seed=seed):
            os.utime(path, (stamp, stamp))
    (photos / "copies").mkdir()
    shutil.copy(photos / "2024" / "photo 000.jpg", photos / "copies" / "the same.jpg")
    result = CliRunner().invoke(
        app, ["index", str(photos), *backbone_args(tiny), "--workers", "0"], env={"P2W_HOME": str(home)}
    )
    assert result.exit_code == 0, result.output
    with running_server(home, [*backbone_args(tiny), "--mapper", str(tiny.mapper)]) as running:
        yield running


def headless() -> Any:
    """A headless chromium with the error probe, its browser log kept (the caller quits it)."""
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    return browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser = headless()
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(server: Running, driver: Any) -> Any:
    """The page, opened with the token (which becomes a cookie), its status loaded; browser logs start empty."""
    driver.set_window_size(1280, 900)
    driver.delete_all_cookies()  # another server's cookie (same host, other port) would win over ?token=
    driver.get_log("browser")  # what earlier tests left
    driver.get(f"{server.url}/?token={server.token}")
    until(driver, lambda d: "31 photos" in state(d)["about"])
    assert driver.current_url == f"{server.url}/", "the token should leave the address bar"
    yield driver
    assert_no_errors(driver)


# fetch(URL) -> [status, content type], with the page's cookie.
FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then((r) => done([r.status, r.headers.get('content-type')]), (e) => done([0, String(e)]));
"""

# Dispatch a drop on the drop zone (or a paste on the document) carrying a small PNG File named arguments[1].
EVENT = """
const [kind, name, done] = arguments;
const canvas = document.createElement('canvas');
canvas.width = 40; canvas.height = 30;
const g = canvas.getContext('2d');
g.fillStyle = kind === 'drop' ? '#2040c0' : '#20a040'; g.fillRect(0, 0, 40, 30);
canvas.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], name, { type: 'image/png' }));
  if (kind === 'drop') {
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true,
                                                                          cancelable: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  }
  done(true);
}, 'image/png');
"""


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script(STATE)


def assert_no_errors(driver: Any, allowed: tuple[str, ...] = ()) -> None:
    """No SEVERE browser log entry (JavaScript errors, CSP violations, failed loads, a 404 favicon) and nothing in
    the probe, except entries containing one of ``allowed``."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    severe = [m for m in severe if not any(a in m for a in allowed)]
    probe = driver.execute_script("return window.__p2wErrors || []")
    assert not severe and not probe, f"browser errors: {severe} {probe}"


def wait_results(driver: Any, titles: tuple[str, ...] = ("pic2word",)) -> dict[str, Any]:
    """The state once a search is done and has rendered columns titled ``titles`` whose first thumbnails loaded."""

    def ready(d: Any) -> dict[str, Any] | bool:
        s = state(d)
        cols = s["columns"]
        if s["busy"] or tuple(c["title"] for c in cols) != titles:
            return False
        return s if all(c["paths"] and all(c["images"][:4]) for c in cols) else False

    return until(driver, ready)


def until(driver: Any, condition: Callable[[Any], Any]) -> Any:
    """``condition(driver)`` once it is true (within ``WAIT``); else an error that shows the page's state."""
    try:
        return WebDriverWait(driver, WAIT).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page did not get there: {state(driver)}") from None


def focused(driver: Any) -> str:
    return driver.execute_script("const e = document.activeElement; return e.id || e.tagName.toLowerCase()")


def outline(driver: Any) -> str:
    return driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle")


def reference_image(folder: Path) -> Path:
    path = folder / "reference.png"
    Image.new("RGB", (64, 48), (200, 30, 40)).save(path)
    return path


def test_search_refine_by_a_result_and_compare(page: Any, server: Running, tmp_path: Path) -> None:
    # Keyboard: the drop zone, then the words, mode, baseline, the folded options and Search, each visibly focused.
    page.find_element(By.ID, "drop").send_keys(Keys.SHIFT)  # focus, without opening the file chooser
    order = [focused(page)]
    for _ in range(5):
        ActionChains(page).send_keys(Keys.TAB).perform()
        order.append(focused(page))
        assert outline(page) == "solid", f"no visible focus on {order[-1]}"
    assert order == ["drop", "text", "mode", "compare", "summary", "search"], order

    page.find_element(By.ID, "file").send_keys(str(reference_image(tmp_path)))
    until(page, lambda d: state(d)["ref"] == "reference.png")
    wait_results(page, ("image",))  # a reference alone searches at once, by the image
    page.find_element(By.ID, "text").send_keys("in blue", Keys.ENTER)  # Enter searches
    before = wait_results(page)["columns"][0]["paths"]
    assert len(before) == 24 and all(p.endswith(".jpg") for p in before)

    # A click on a result's thumbnail makes that photo the reference, and searches again.
    picked = before[2]
    page.find_elements(By.CSS_SELECTOR, "#results .hit .pick")[2].click()
    until(page, lambda d: state(d)["ref"] == picked)
    after = wait_results(page)["columns"][0]["paths"]
    assert after != before, "a new reference should change the results"
    assert page.find_element(By.ID, "ref-image").get_attribute("alt") == picked

    # The same with the keyboard: a result is a button, Enter on it picks it; the focus stays among the results.
    chosen = after[1]
    page.find_elements(By.CSS_SELECTOR, "#results .hit .pick")[1].send_keys(Keys.ENTER)
    until(page, lambda d: state(d)["ref"] == chosen)
    wait_results(page)
    assert focused(page) == "button" and outline(page) == "solid"

    # Pic2Word next to the average baseline: two columns, side by side on a laptop screen.
    Select(page.find_element(By.ID, "compare")).select_by_value("average")
    both = wait_results(page, ("pic2word", "average (baseline)"))
    assert all(len(c["paths"]) == 24 for c in both["columns"]) and not both["message"]
    left, right = page.find_elements(By.CSS_SELECTOR, "#results .column")
    assert left.rect["y"] == right.rect["y"] and left.rect["x"] < right.rect["x"]
    href = page.find_element(By.CSS_SELECTOR, "#results .hit a").get_attribute("href")
    assert page.execute_async_script(FETCH, href) == [200, "image/jpeg"], "open original"

    # Only under this folder: every result is under it.
    page.find_element(By.TAG_NAME, "summary").click()
    folder = str(Path(chosen).parent.parent / "2025")
    page.find_element(By.ID, "within").send_keys(folder, Keys.ENTER)
    until(page, lambda d: all(p.startswith(folder) for p in state(d)["columns"][0]["paths"]))
    within = wait_results(page, ("pic2word", "average (baseline)"))
    assert all(len(c["paths"]) == 15 for c in within["columns"]), within
    page.find_element(By.ID, "within").clear()

    # Taken before 2025 (the 2024 photos, dated by their files), then a cutoff that keeps the best and its near ties.
    page.find_element(By.ID, "before").send_keys("2025", Keys.ENTER)
    until(page, lambda d: all("/2024/" in p for c in state(d)["columns"] for p in c["paths"]))
    dated = wait_results(page, ("pic2word", "average (baseline)"))
    assert all(len(c["paths"]) == 15 for c in dated["columns"]), dated
    assert page.find_element(By.CSS_SELECTOR, "#results .hit .taken").text == "2024-06-01 12:00 (file)"
    page.find_element(By.ID, "min-score").send_keys("1", Keys.ENTER)  # no cosine of two different photos reaches 1
    until(page, lambda d: "no results pass" in d.find_element(By.ID, "results").text)
    page.find_element(By.ID, "min-score").clear()
    ids = {h["path"]: h["id"] for h in server.json("/api/search", {"text": "a photo", "k": 31})[1]["results"]}
    query = {"photo": ids[chosen], "text": "in blue", "before": "2025", "k": 24}
    uncut = [h["score"] for h in server.json("/api/search", query)[1]["results"]]
    kept = before_drop(uncut, DROP)  # what the page's cutoff must keep of the pic2word column
    page.find_element(By.ID, "cutoff").click()
    until(page, lambda d: len(state(d)["columns"][0]["paths"]) == kept and not state(d)["busy"])
    sent = page.execute_script("return window.__p2wSearches")[-2:]  # pic2word, then the average baseline
    assert [b.get("drop") for b in sent] == [DROP, DROP] and sent[0]["before"] == "2025", sent
    page.find_element(By.ID, "before").clear()
    page.find_element(By.ID, "before").send_keys("2020", Keys.ENTER)
    until(page, lambda d: "no results pass" in d.find_element(By.ID, "results").text)
    page.find_element(By.ID, "after").send_keys("July", Keys.ENTER)
    until(page, lambda d: "is not a date" in state(d)["message"])


def test_several_references_each_fills_its_star(page: Any, tmp_path: Path) -> None:
    page.find_element(By.ID, "file").send_keys(str(reference_image(tmp_path)))
    until(page, lambda d: state(d)["ref"] == "reference.png")
    wait_results(page, ("image",))
    second = tmp_path / "second.png"
    Image.new("RGB", (48, 40), (30, 160, 60)).save(second)
    page.find_element(By.ID, "add-file").send_keys(str(second))
    until(page, lambda d: state(d)["ref"] == "reference.png + second.png")
    items = [li.text for li in page.find_elements(By.CSS_SELECTOR, "#ref-list li")]
    assert [i.split()[:3] for i in items] == [["*", "1", "reference.png"], ["*", "2", "second.png"]], items
    wait_results(page, ("image",))  # two images alone: the image mode, with both
    page.find_element(By.ID, "text").send_keys("in blue", Keys.ENTER)  # pic2word: the default prompt has one *
    until(page, lambda d: "need a prompt with one * each" in state(d)["message"])
    page.find_element(By.TAG_NAME, "summary").click()
    page.find_element(By.ID, "prompt").send_keys("a * next to a * , {text}", Keys.ENTER)
    wait_results(page)
    sent = page.execute_script("return window.__p2wSearches")[-1]
    assert len(sent["images"]) == 2 and sent["prompt"] == "a * next to a * , {text}", sent
    page.find_element(By.CSS_SELECTOR, "#ref-list li button").click()  # remove the first: the second is left
    until(page, lambda d: state(d)["ref"] == "second.png")
    page.find_element(By.ID, "prompt").clear()
    page.find_element(By.ID, "text").send_keys(Keys.ENTER)
    wait_results(page)
    assert "upload" in page.execute_script("return window.__p2wSearches")[-1]
    assert not page.find_element(By.ID, "ref-list").is_displayed()


def test_the_training_free_modes_and_their_text_weight(page: Any, tmp_path: Path) -> None:
    """slerp with a text weight of its own, pic2word beside it; the weight is asked for only with a fusion mode,
    and one out of range is said, not sent."""
    assert not page.find_element(By.ID, "alpha").is_displayed()
    page.find_element(By.ID, "file").send_keys(str(reference_image(tmp_path)))
    wait_results(page, ("image",))
    page.find_element(By.ID, "text").send_keys("in blue")
    Select(page.find_element(By.ID, "mode")).select_by_value("slerp")
    wait_results(page, (f"slerp a={DEFAULT_ALPHA['slerp']:g}",))  # the server's default, said in the title
    assert page.find_element(By.ID, "alpha").get_attribute("placeholder") == f"{DEFAULT_ALPHA['slerp']:g}"
    page.find_element(By.ID, "alpha").send_keys("0.3", Keys.ENTER)
    Select(page.find_element(By.ID, "compare")).select_by_value("pic2word")
    both = wait_results(page, ("slerp a=0.3", "pic2word (baseline)"))
    assert all(len(c["paths"]) == 24 for c in both["columns"]), both
    sent = page.execute_script("return window.__p2wSearches")[-2:]
    assert sent[0]["mode"] == "slerp" and sent[0]["alpha"] == 0.3 and "alpha" not in sent[1], sent
    Select(page.find_element(By.ID, "compare")).select_by_value("weighted")  # the same weight for both fusions
    wait_results(page, ("slerp a=0.3", "weighted a=0.3 (baseline)"))
    page.find_element(By.ID, "alpha").clear()
    page.find_element(By.ID, "alpha").send_keys("2", Keys.ENTER)
    until(page, lambda d: "is not a number from 0" in state(d)["message"])
    Select(page.find_element(By.ID, "mode")).select_by_value("pic2word")
    Select(page.find_element(By.ID, "compare")).select_by_value("")
    until(page, lambda d: not d.find_element(By.ID, "alpha").is_displayed())


def test_the_near_duplicates_view(page: Any, server: Running) -> None:
    expected = server.json("/api/duplicates", {})[1]
    page.find_element(By.ID, "show-duplicates").click()
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .duplicates"))
    groups = page.find_elements(By.CSS_SELECTOR, "#results .duplicates")
    assert len(groups) == expected["count"] >= 1
    shown = [sorted(p.text for p in g.find_elements(By.CSS_SELECTOR, ".hit .path")) for g in groups]
    assert any("the same.jpg" in " ".join(names) and "photo 000.jpg" in " ".join(names) for names in shown), shown
    page.find_elements(By.CSS_SELECTOR, "#results .duplicates .pick")[0].click()  # a photo of a group: the reference
    wait_results(page, ("image",))


def test_drop_and_paste_an_image(page: Any) -> None:
    # What a drop of a file from the desktop and a paste of a copied image deliver to the page (a File).
    page.execute_async_script(EVENT, "drop", "dropped.png")
    until(page, lambda d: state(d)["ref"] == "dropped.png")
    wait_results(page, ("image",))
    page.find_element(By.ID, "text").send_keys("in blue")
    page.execute_async_script(EVENT, "paste", "image.png")
    until(page, lambda d: state(d)["ref"] == "image.png")
    wait_results(page)


def test_an_unreadable_upload_is_a_clear_message_and_the_page_keeps_working(page: Any, tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n")
    page.find_element(By.ID, "file").send_keys(str(fake))
    message = until(page, lambda d: state(d)["message"])
    assert message.startswith("cannot use notes.png:") and "not an image" in message, message
    assert state(page)["ref"] == "", "an unreadable upload must not become the reference"
    # The one failed request the page was asked to make (the browser logs it); nothing else.
    assert_no_errors(
        page, allowed=("/api/upload - Failed to load resource: the server responded with a status of 415",)
    )

    page.find_element(By.ID, "file").send_keys(str(reference_image(tmp_path)))
    until(page, lambda d: state(d)["ref"] == "reference.png")
    assert wait_results(page, ("image",))["message"] == ""


def test_a_phone_sized_window(page: Any, tmp_path: Path) -> None:
    page.set_window_size(390, 844)
    Select(page.find_element(By.ID, "compare")).select_by_value("average")  # nothing to search yet: no complaint
    assert state(page)["message"] == ""
    page.find_element(By.ID, "file").send_keys(str(reference_image(tmp_path)))
    wait_results(page, ("image",))
    assert "needs a reference image and words" in page.find_element(By.CSS_SELECTOR, "#results .note").text
    page.find_element(By.ID, "text").send_keys("in blue", Keys.ENTER)
    wait_results(page, ("pic2word", "average (baseline)"))
    width = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
    left, right = page.find_elements(By.CSS_SELECTOR, "#results .column")
    assert right.rect["y"] == left.rect["y"], "on a phone too, the two columns are side by side"
    assert right.rect["x"] + right.rect["width"] <= width[1]
    page.save_screenshot(str(tmp_path / "phone.png"))  # to look at: pytest --basetemp=DIR


def test_a_video_result_shows_its_frame_and_plays_from_its_time(driver: Any, tmp_path: Path) -> None:
    pytest.importorskip("av")
    home, folder = tmp_path / "video-home", tmp_path / "videos"
    write_video(folder / "holiday.mp4", [(item(2, 5), 2.0), (item(3, 3), 2.0)])
    Image.fromarray(item(4, 1)).save(folder / "photo.png")
    Image.fromarray(item(3, 3)).save(tmp_path / "green.png")
    micro = ["--model", "p2w-micro-fashion"]
    result = CliRunner().invoke(app, ["index", str(folder), *micro, "--workers", "0"], env={"P2W_HOME": str(home)})
    assert result.exit_code == 0, result.output
    with running_server(home, micro) as served:
        driver.delete_all_cookies()
        driver.get_log("browser")
        driver.get(f"{served.url}/?token={served.token}")
        until(driver, lambda d: "2 photos" in state(d)["about"])  # the photo, and the video once (not its frames)
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "green.png"))
        first = wait_results(driver, ("image",))["columns"][0]
        assert first["paths"][0].endswith("holiday.mp4 @ 00:02, 00:00"), first  # the green frame first, then the blue
        assert first["images"][0], "the frame's thumbnail"
        link = driver.find_element(By.CSS_SELECTOR, "#results .hit a")
        assert link.text == "play from 00:02" and link.get_attribute("href").endswith("#t=2")
        assert driver.execute_async_script(FETCH, link.get_attribute("href")) == [200, "video/mp4"]
        assert_no_errors(driver)


def test_no_catalog_and_no_mapper_are_said_plainly(driver: Any, tiny: Any, tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    with running_server(home, backbone_args(tiny)) as blank:  # no catalog, and no mapper for this model
        driver.delete_all_cookies()  # the cookie of the other server (same host, other port) would win over ?token=
        driver.get(f"{blank.url}/?token={blank.token}")
        s = until(driver, lambda d: state(d)["message"] and state(d))
        assert "p2w index DIR" in s["message"] and "no mapper" in s["message"], s
        assert "no mapper" in s["about"] and "0 photos" in s["about"]
        for select in ("mode", "compare"):
            assert not driver.find_element(By.CSS_SELECTOR, f"#{select} option[value=pic2word]").is_enabled()
        driver.find_element(By.ID, "text").send_keys("a red dress", Keys.ENTER)
        until(driver, lambda d: not state(d)["busy"] and "p2w index DIR" in state(d)["message"])
        assert_no_errors(
            driver, allowed=("/api/search - Failed to load resource: the server responded with a status of 409",)
        )
