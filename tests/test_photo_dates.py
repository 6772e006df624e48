"""Capture times (EXIF, else mtime), the date and folder filters of a search, and the score cutoff: in the library, the
CLI and a running server; filtered searches at scale with synthetic rows."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core.cutoff import Cutoff, before_drop
from p2w.core.dates import Where, capture_time, from_mtime, parse_bound
from p2w.core.gallery import Hit
from p2w.errors import P2WError
from p2w.library import search as search_mod
from p2w.library.catalog import Catalog, catalog_for
from p2w.library.index import index
from p2w.serve.errors import ServeError
from p2w.serve.requests import Limits, Query
from p2w.spec import BackboneSpec
from serving import backbone_args, running_server

runner = CliRunner()


def dated_jpeg(path: Path, when: str | None, offset: str | None = None, colour: int = 0) -> Path:
    """A JPEG whose EXIF says it was taken ``when`` ("2023:07:14 10:30:00"), at ``offset`` ("+02:00")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when is not None:
        inner = exif.get_ifd(0x8769)
        inner[0x9003] = when
        if offset is not None:
            inner[0x9011] = offset
    rng = np.random.default_rng(colour)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, exif=exif)
    return path


def wall(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args).timetuple())  # type: ignore[arg-type]


def test_capture_time_is_exif_with_its_offset_else_the_files_time(tmp_path):
    with_offset = dated_jpeg(tmp_path / "a.jpg", "2023:07:14 10:30:00", "+02:00")
    taken = capture_time(with_offset, 0)
    assert (taken.seconds, taken.offset, taken.source) == (wall(2023, 7, 14, 10, 30), 120, "exif")
    assert taken.iso() == "2023-07-14T10:30:00+02:00"
    bare = capture_time(dated_jpeg(tmp_path / "b.jpg", "2019:01:02 03:04:05"), 0)
    assert (bare.seconds, bare.offset, bare.iso()) == (wall(2019, 1, 2, 3, 4, 5), None, "2019-01-02T03:04:05")
    for name, value in (("unset.jpg", "0000:00:00 00:00:00"), ("none.jpg", None), ("junk.jpg", "yesterday")):
        path = dated_jpeg(tmp_path / name, value)
        mtime = wall(2020, 5, 6, 7, 8) * 10**9
        assert capture_time(path, mtime) == from_mtime(mtime) and from_mtime(mtime).source == "mtime"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe1 not really")
    assert capture_time(broken, 5 * 10**9).source == "mtime"
    local = dt.datetime.fromtimestamp(1_700_000_000)  # the file's time is this machine's wall clock
    assert from_mtime(1_700_000_000 * 10**9).seconds == calendar.timegm(local.timetuple())


def test_bounds_are_whole_or_partial_iso_dates():
    assert parse_bound("2023") == wall(2023, 1, 1)
    assert parse_bound("2023-07") == wall(2023, 7, 1)
    assert parse_bound("2023-07-14") == wall(2023, 7, 14)
    assert parse_bound("2023-07-14T10:30") == parse_bound("2023-07-14 10:30") == wall(2023, 7, 14, 10, 30)
    for bad in ("July", "2023-13", "2023-02-30", "23-07", "2023/07", ""):
        with pytest.raises(P2WError, match="is not a date"):
            parse_bound(bad, "--after")
    with pytest.raises(P2WError, match="no photo can pass both"):
        Where.parse(None, "2024", "2023-06")
    where = Where.parse("rel", "2023-07", "2024")
    assert where.within == os.path.abspath("rel") and where.to_wire()["after"] == "2023-07-01T00:00:00"
    assert Where.parse(None, where.to_wire()["after"]).after == where.after  # what a server is sent parses back
    assert not Where() and Where(after=1) and Where(within="/x")


@pytest.fixture
def spec(tiny: Any) -> BackboneSpec:
    return BackboneSpec(str(tiny.config), str(tiny.weights))


@pytest.fixture
def dated(tmp_path: Path) -> Path:
    """Four photos: three with EXIF dates (July 2023, New Year's Eve 2023, March 2024), one PNG dated by its mtime
    (May 2022)."""
    root = tmp_path / "photos"
    dated_jpeg(root / "2023" / "july.jpg", "2023:07:14 10:30:00", "+02:00", 1)
    dated_jpeg(root / "2023" / "eve.jpg", "2023:12:31 23:30:00", None, 2)
    dated_jpeg(root / "2024" / "march.jpg", "2024:03:01 09:00:00", "-05:00", 3)
    png = root / "2024" / "old.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    stamp = dt.datetime(2022, 5, 5, 12, 0).timestamp()
    os.utime(png, (stamp, stamp))
    return root


def search_json(*args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["search", "a photo", "--json", "--no-server", *args])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def names(rows: list[dict[str, Any]]) -> set[str]:
    return {Path(r["path"]).name for r in rows}


def test_search_after_and_before_and_in(dated, tiny):
    bb = backbone_args(tiny)
    assert runner.invoke(app, ["index", str(dated), *bb, "--workers", "0"]).exit_code == 0
    rows = search_json(*bb, "-k", "10")
    taken = {Path(r["path"]).name: (r["taken"], r["taken_from"]) for r in rows}
    assert taken["july.jpg"] == ("2023-07-14T10:30:00+02:00", "exif")
    assert taken["eve.jpg"] == ("2023-12-31T23:30:00", "exif")
    assert taken["old.png"][1] == "mtime" and taken["old.png"][0].startswith("2022-05-05T12:00:00")
    assert names(search_json(*bb, "--after", "2023")) == {"july.jpg", "eve.jpg", "march.jpg"}
    assert names(search_json(*bb, "--after", "2023-07", "--before", "2024")) == {"july.jpg", "eve.jpg"}
    assert names(search_json(*bb, "--after", "2023-07-15", "--before", "2024-03-01T09:00")) == {"eve.jpg"}
    assert names(search_json(*bb, "--before", "2023")) == {"old.png"}
    assert names(search_json(*bb, "--in", str(dated / "2024"), "--after", "2023")) == {"march.jpg"}
    assert search_json(*bb, "--after", "2030") == []
    bad = runner.invoke(app, ["search", "a photo", *bb, "--after", "2023-13"])
    assert bad.exit_code != 0 and "is not a date" in bad.stderr and "Traceback" not in bad.output
    empty = runner.invoke(app, ["search", "a photo", *bb, "--after", "2030", "--no-server"])
    assert empty.exit_code == 0 and "no photo" in empty.stderr


def test_a_catalog_without_dates_gains_them_without_re_embedding(dated, spec):
    def never() -> Any:
        raise AssertionError("the model was loaded although nothing needed embedding")

    import p2w

    index([dated], spec, lambda: p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu"), workers=0)
    db = catalog_for(spec) / "catalog.sqlite"
    with sqlite3.connect(db) as con:  # as the schema-3 migration leaves it: the mtime, the EXIF not read
        con.execute("UPDATE files SET taken = 0, taken_offset = NULL, taken_from = NULL")
    report = index([dated], spec, never, workers=0)
    assert (report.dated, report.added, report.unchanged) == (4, 0, 4)
    catalog = Catalog(catalog_for(spec), spec.id)
    rows = {Path(r.path).name: r.taken for r in catalog.rows_for(catalog.ids()).values()}
    catalog.close()
    assert rows["march.jpg"] is not None and rows["march.jpg"].iso() == "2024-03-01T09:00:00-05:00"
    assert rows["old.png"] is not None and rows["old.png"].source == "mtime"
    assert index([dated], spec, never, workers=0).dated == 0  # read once


DIM = 32


@pytest.fixture
def many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Catalog, np.ndarray]:
    """6,000 synthetic rows, one an hour from 1 January 2020 on, in two folders; the files need not exist."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = Catalog(tmp_path / "catalog", "b/x", create=True)
    rows = [
        (f"/p/{'odd' if i % 2 else 'even'}/{i}.jpg", 1, 1, f"{i:064x}", v.tobytes(), 1.0, from_mtime(0))
        for i, v in enumerate(vectors)
    ]
    catalog.put(rows, DIM)
    catalog.con.executemany(
        "UPDATE files SET taken = ? WHERE path = ?", [(hour(i), os.fsencode(r[0])) for i, r in enumerate(rows)]
    )
    monkeypatch.setattr(search_mod.os.path, "exists", lambda path: True)
    return catalog, vectors


def hour(i: int) -> int:
    """Row i's capture time: i hours after the start of 2020."""
    return wall(2020, 1, 1) + 3600 * i


def best(vectors: np.ndarray, query: np.ndarray, rows: range | list[int], k: int) -> list[str]:
    """The exact top ``k`` among ``rows`` (row i is /p/{odd|even}/i.jpg)."""
    picked = np.asarray(list(rows))
    order = picked[np.argsort(-(vectors[picked] @ query), kind="stable")[:k]]
    return [f"/p/{'odd' if i % 2 else 'even'}/{i}.jpg" for i in order]


def test_a_filtered_search_returns_k_whenever_k_pass(many, monkeypatch):
    catalog, vectors = many
    query = vectors[17] + 0.5 * vectors[4242]
    query /= np.linalg.norm(query)
    exact_calls = []
    real_exact = search_mod.exact
    monkeypatch.setattr(search_mod, "exact", lambda *a: exact_calls.append(1) or real_exact(*a))
    assert search_mod.exact_limit(6000) == 1084  # 14 x sqrt(6,000): 60 pass -> exact; 5,000 -> the ANN's filter
    rare = Where(after=hour(3000), before=hour(3060))  # 60 of 6,000 pass: 1%, scored exactly
    hits = search_mod.search(catalog, query, 10, rare)
    assert [h.path for h in hits] == best(vectors, query, range(3000, 3060), 10) and exact_calls == [1]
    common = Where(after=hour(1000))  # 5,000 pass: through the ANN's filter
    hits = search_mod.search(catalog, query, 10, common)
    truth = best(vectors, query, range(1000, 6000), 10)
    assert len(hits) == 10 and all(int(Path(h.path).stem) >= 1000 for h in hits) and exact_calls == [1]
    assert len({h.path for h in hits} & set(truth)) >= 9
    odd_late = Where(within="/p/odd", after=hour(5980))  # 10 pass: the folder and the dates together
    assert [h.path for h in search_mod.search(catalog, query, 10, odd_late)] == best(
        vectors, query, range(5981, 6000, 2), 10
    )
    monkeypatch.setattr(search_mod, "EXACT_FACTOR", 0)  # 12 pass, through the ANN's filter, which finds few or none
    twelve = Where(after=hour(100), before=hour(112))
    assert [h.path for h in search_mod.search(catalog, query, 10, twelve)] == best(vectors, query, range(100, 112), 10)
    with pytest.raises(P2WError, match="no catalogued photos under /q"):
        search_mod.search(catalog, query, 10, Where(within="/q"))
    catalog.close()


def hit(rank: int, score: float) -> Hit:
    return Hit(rank, score, f"/p/{rank}.jpg")


def test_the_cutoff_keeps_what_passes_and_ranks_it_again():
    # gaps 0.010 0.001 0.001 0.001 0.050 0.001: median 0.001; the first over 30 of them is the 0.05 after the fifth
    scores = [0.400, 0.390, 0.389, 0.388, 0.387, 0.337, 0.336]
    hits = [hit(i, s) for i, s in enumerate(scores, 1)]
    assert Cutoff().apply(hits) == hits
    assert [(h.rank, h.score) for h in Cutoff(drop=30).apply(hits)] == [(i, s) for i, s in enumerate(scores[:5], 1)]
    assert len(Cutoff(drop=5).apply(hits)) == 1  # the 0.010 gap is over 5 median gaps
    assert before_drop(scores, 100) == 7 and before_drop(scores[:2], 1) == 2 and before_drop([], 1) == 0
    assert [h.score for h in Cutoff(min_score=0.388).apply(hits)] == scores[:4]
    assert [(h.rank, h.score) for h in Cutoff(min_score=0.39, drop=30).apply(hits[1:])] == [(1, 0.39)]
    with pytest.raises(P2WError, match=r"--min-score 1\.5"):
        Cutoff(min_score=1.5)
    with pytest.raises(P2WError, match="not one"):
        Cutoff(drop=0.5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"after": "2023-13"}, "is not a date"),
        ({"before": 2023}, "before must be a string"),
        ({"after": "2024", "before": "2023"}, "no photo can pass both"),
        ({"min_score": "high"}, "min_score must be a number"),
        ({"drop": True}, "drop must be a number"),
        ({"drop": 0}, "not one"),
    ],
)
def test_the_server_refuses_a_bad_filter_or_cutoff(fields, message):
    with pytest.raises(ServeError, match=message):
        Query.from_json({"text": "x", **fields}, Limits())


def test_a_running_server_filters_and_cuts_as_this_process_does(dated, tiny, tmp_path):
    bb = backbone_args(tiny)
    home = Path(os.environ["P2W_HOME"])
    assert runner.invoke(app, ["index", str(dated), *bb, "--workers", "0"]).exit_code == 0
    args = ("--after", "2023-07", "--before", "2024-06", "--cutoff", "--min-score", "-1", "-k", "3")
    here = search_json(*bb, *args)
    with running_server(home, [*bb, "--mapper", str(tiny.mapper)]) as server:
        status, answer = server.json("/api/search", {"text": "a photo", "after": "2023-07", "before": "2024-06"})
        assert status == 200 and names(answer["results"]) == {"july.jpg", "eve.jpg", "march.jpg"}
        warm = runner.invoke(app, ["search", "a photo", "--json", *bb, *args])
        assert warm.exit_code == 0, warm.output
    there = json.loads(warm.stdout)
    assert [r["path"] for r in there] == [r["path"] for r in here] and names(here) <= {
        "july.jpg",
        "eve.jpg",
        "march.jpg",
    }
    assert [r["taken"] for r in there] == [r["taken"] for r in here]
    assert np.allclose([r["score"] for r in there], [r["score"] for r in here], atol=1e-5)
