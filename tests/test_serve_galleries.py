"""`p2w serve` on the other galleries: a FAISS index over a layout (local files, and shard members that are no local
file) and a clip-retrieval back end. Only local files named by the layout are ever served; a result with stored
features refines without the image tower; the page shows a caption and a link where there is no local file."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from p2w.cli import app
from p2w.errors import P2WError
from p2w.serve.errors import NotFound
from p2w.serve.query import GalleryChoice
from p2w.serve.requests import Query
from p2w.serve.service import Service, start
from p2w.settings import Settings
from serving import Running, backbone_args, make_photos, running_server

pytest.importorskip("faiss")
runner = CliRunner()


def shard(path: Path, photos: list[Path]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            for name, data in ((f"{i:09d}.jpg", photo.read_bytes()), (f"{i:09d}.txt", f"shard photo {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def layout_of(root: Path, tiny: Any) -> Path:
    """A layout of 8 local photos and a shard of 4 others (keys, captions), and its index."""
    local = make_photos(root / "photos", 8)
    elsewhere = make_photos(root / "unpacked", 4, seed=3)
    shard(root / "00000.tar", elsewhere)
    out = root / "emb"
    args = [*backbone_args(tiny), "--device", "cpu"]
    made = runner.invoke(app, ["embed", "dataset", str(root / "photos"), str(root / "00000.tar"), "--out", str(out),
                               *args])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert runner.invoke(app, ["index", "--embeddings", str(out)]).exit_code == 0
    assert len(local) == 8
    return out


@pytest.fixture
def indexed(tmp_path: Path, tiny: Any) -> Path:
    return layout_of(tmp_path, tiny)


def test_a_service_on_an_index_serves_its_local_files_and_refines_from_stored_features(indexed, tiny_engine, p2w_home):
    service = Service(tiny_engine, Settings.from_env(), gallery=GalleryChoice(index=indexed))
    try:
        status = service.status()
        assert status["photos"] == 12 and "the index in" in status["gallery"]
        results = service.search(Query(text="a photo", k=12))["results"]
        assert len(results) == 12
        local = [r for r in results if r["local"]]
        keys = [r for r in results if not r["local"]]
        assert len(local) == 8 and len(keys) == 4 and all(r["refine"] for r in results)
        assert all(Path(r["path"]).parent.name == "photos" for r in local)
        assert {r["caption"] for r in keys} == {f"shard photo {i}" for i in range(4)}
        first = local[0]
        original = service.original(first["id"])
        with original.file:
            assert original.file.read(original.size) == Path(first["path"]).read_bytes()
        assert service.thumbnail(first["id"]).is_file()
        with pytest.raises(NotFound, match="no local file"):
            service.original(keys[0]["id"])  # a shard's key names no file: nothing is opened
        with pytest.raises(NotFound):
            service.thumbnail(10_000)  # not a row

        def no_tower(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the image tower ran for a result whose features the layout holds")

        service.engine.image_features = no_tower  # type: ignore[method-assign]
        refined = service.search(Query(photo=keys[0]["id"], mode="image", k=1))["results"]
        assert refined[0]["id"] == keys[0]["id"]  # its own vector x norm: its own nearest
    finally:
        del service.engine.image_features
        service.close()


def test_a_missing_index_stops_the_server_before_it_serves(tmp_path, tiny_engine, p2w_home):
    with pytest.raises(P2WError, match=r"no image\.index"):
        start(lambda: tiny_engine, Settings.from_env(), gallery=GalleryChoice(index=tmp_path))
    with pytest.raises(P2WError, match="not both"):
        GalleryChoice(index=tmp_path, knn_service="http://127.0.0.1:1")


def test_a_service_on_a_knn_service_shows_links_and_never_opens_what_it_names(tiny_engine, p2w_home):
    from test_knn_service import Backend, serve

    backend = Backend()
    with serve(backend) as url:
        service = Service(tiny_engine, Settings.from_env(), gallery=GalleryChoice(knn_service=url))
        try:
            assert service.status()["photos"] is None
            results = service.search(Query(text="red", k=3))["results"]
            assert [(r["local"], r["refine"]) for r in results] == [(False, False)] * 3
            assert all(r["url"].startswith("https://img.example/") for r in results)
            with pytest.raises(NotFound):
                service.search(Query(photo=results[0]["id"], mode="image"))
            with pytest.raises(NotFound):
                service.original(results[0]["id"])
        finally:
            service.close()


# ---- the page, in a real browser -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_server(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("index-page")
    out = layout_of(root, tiny)
    with running_server(root / "home", [*backbone_args(tiny), "--mapper", str(tiny.mapper), "--index", str(out)]) as r:
        yield r


def test_the_page_on_an_index(index_server: Running, tmp_path: Path) -> None:
    pytest.importorskip("selenium")
    import test_serve_page as page_test

    if not (page_test.CHROMIUM and page_test.CHROMEDRIVER):
        pytest.skip("no headless browser")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page_test.headless()  # the same browser set-up as the page's own tests
    try:
        driver.get(f"{index_server.url}/?token={index_server.token}")
        page_test.until(driver, lambda d: "12 photos" in page_test.state(d)["about"])
        driver.find_element(By.ID, "text").send_keys("a photo", Keys.ENTER)

        def cards(d: Any) -> Any:
            found = d.execute_script(
                "return [...document.querySelectorAll('#results .hit')].map((h) => ({"
                "thumb: !!h.querySelector('img'), none: h.querySelector('.nothumb')?.textContent || '',"
                "loaded: [...h.querySelectorAll('img')].every((i) => i.complete && i.naturalWidth > 0),"
                "link: h.querySelector('a')?.textContent || ''}))"
            )
            return found if len(found) == 12 and all(c["loaded"] for c in found) else False

        shown = page_test.until(driver, cards)
        assert sum(c["thumb"] for c in shown) == 8 and all(c["link"] == "open original" for c in shown if c["thumb"])
        assert sorted(c["none"] for c in shown if not c["thumb"]) == [f"shard photo {i}" for i in range(4)]
        key = driver.find_element(By.CSS_SELECTOR, "#results .hit .nothumb").find_element(By.XPATH, "..")
        key.click()  # a shard's row: no image to show, but its stored features refine the search
        page_test.until(driver, lambda d: page_test.state(d)["ref"].startswith("000000"))
        page_test.until(driver, cards)
        page_test.assert_no_errors(driver)
    finally:
        driver.quit()


def test_a_layout_and_its_npy_are_what_the_index_says(indexed):
    from p2w.datasets.faiss_index import IndexInfo

    info = IndexInfo.read(indexed)
    assert info is not None and info.current(indexed) is not None and info.builds[0].rows == 12
    assert np.load(next((indexed / "img_emb").glob("*.npy"))).dtype == np.float16
