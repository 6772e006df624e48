"""File names as they come: not UTF-8 (old disks, camera cards, archives), holding rich markup, long ones in a pipe;
P2W_HOME with '#' and '?'. Stored exactly, shown escaped, written to JSON so that they round-trip."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from p2w import fspath
from p2w.cli import app

runner = CliRunner()
LATIN1 = os.fsdecode(b"latin1_caf\xe9.jpg")  # a Latin-1 name: byte 0xE9 is not UTF-8


def _photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def _tiny(tiny) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--model", str(tiny.config), "--pretrained", str(tiny.weights)]


def test_the_path_codec_round_trips_every_name():
    names = [LATIN1, "plain.jpg", "été.png", "[draft] red shirt.jpg", "a\nnewline.jpg", "back\\slash.jpg"]
    for name in names:
        assert fspath.from_db(fspath.to_db(name)) == name
        record = json.loads(json.dumps(fspath.to_json(name)))  # strict JSON: no lone surrogate in it
        assert fspath.from_json(record) == name
        assert fspath.is_exact_text(fspath.shown(name))
    assert fspath.shown(LATIN1) == "latin1_caf\\xe9.jpg" and fspath.to_json(LATIN1) == {
        "path": "latin1_caf\\xe9.jpg",
        "path_bytes": base64.b64encode(b"latin1_caf\xe9.jpg").decode(),
    }
    assert fspath.to_json("été.png") == {"path": "été.png"}  # valid UTF-8: no bytes field
    assert fspath.shown("a\nnewline.jpg") == "a\\nnewline.jpg"
    assert fspath.from_db("/written/by/an/older/p2w.jpg") == "/written/by/an/older/p2w.jpg"  # TEXT rows


def test_a_name_that_is_not_utf8_is_indexed_searched_and_printed(tiny, tmp_path):
    """It crashed `p2w index` on every run (UnicodeEncodeError from SQLite), and none of the folder was added."""
    folder = tmp_path / "card"
    odd = _photo(folder / LATIN1, 0)
    for i in range(3):
        _photo(folder / f"ok {i}.jpg", i + 1)
    done = runner.invoke(app, ["index", str(folder), *_tiny(tiny), "--workers", "0", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["added"] == 4 and report["total"] == 4 and not report["skipped"]
    again = json.loads(runner.invoke(app, ["index", str(folder), *_tiny(tiny), "--json"]).stdout)
    assert again["unchanged"] == 4 and again["added"] == 0  # found again by its exact bytes

    found = runner.invoke(app, ["search", str(odd), *_tiny(tiny), "--json", "-k", "4", "--no-server"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert hits[0]["path"] == fspath.shown(str(odd)) and fspath.from_json(hits[0]) == str(odd)
    assert all("path_bytes" not in h for h in hits[1:])

    table = runner.invoke(app, ["search", str(odd), *_tiny(tiny), "-k", "4", "--no-server"])
    assert table.exit_code == 0 and "latin1_caf\\xe9.jpg" in table.stdout


def test_paths_output_writes_the_exact_bytes_for_xargs(tiny, tmp_path):
    folder = tmp_path / "card"
    odd = _photo(folder / LATIN1, 0)
    _photo(folder / "ok.jpg", 1)
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home")}
    base = [sys.executable, "-m", "p2w"]
    subprocess.run(
        [*base, "index", str(folder), *_tiny(tiny), "--workers", "0"], env=env, check=True, capture_output=True
    )
    done = subprocess.run(
        [*base, "search", os.fsencode(str(odd)), *_tiny(tiny), "--paths", "-k", "2", "--no-server"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert os.fsencode(str(odd)) in done.stdout.splitlines()  # the real name, byte for byte


@pytest.mark.parametrize("name", ["[draft] red shirt.jpg", "[/old] shirt.jpg", "[bold]x[/bold] :smile:.jpg"])
def test_names_are_printed_as_data_never_as_markup(tiny, tmp_path, name):
    """`/photos/[draft] red shirt.jpg` printed as `/photos/ red shirt.jpg`; `[/old]` crashed with MarkupError."""
    photo = _photo(tmp_path / "photos" / name, 0)
    for args in (["index", str(photo.parent), "--workers", "0"], ["search", "a photo", "--no-server"], ["status"]):
        done = runner.invoke(app, [*args, *_tiny(tiny)] if args[0] != "status" else args)
        assert done.exit_code == 0, (args, done.output)
        if args[0] == "search":
            assert name in done.stdout.replace("\n", "")
    missing = runner.invoke(app, ["index", str(tmp_path / "[/gone]" / name), *_tiny(tiny)])
    assert missing.exit_code == 1 and f"[/gone]/{name}" in missing.stderr


def test_tables_in_a_pipe_do_not_break_paths(tiny, tmp_path):
    """Written to a pipe, rich laid tables out at 80 columns and folded each long path over several lines."""
    deep = tmp_path / ("a folder with a long name " * 4).strip() / "and another one below it"
    photos = [_photo(deep / f"a photo with a long descriptive name {i}.jpg", i) for i in range(3)]
    env = {**os.environ, "P2W_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    base = [sys.executable, "-m", "p2w"]
    subprocess.run(
        [*base, "index", str(deep), *_tiny(tiny), "--workers", "0"], env=env, check=True, capture_output=True
    )
    for args in (["search", "a photo", "--no-server", *_tiny(tiny)], ["status"]):
        done = subprocess.run([*base, *args], env=env, capture_output=True, text=True, check=True)
        wanted = [str(p) for p in photos] if args[0] == "search" else [str(tmp_path / "home" / "catalogs")]
        for path in wanted:
            assert any(path in line for line in done.stdout.splitlines()), (path, done.stdout)


def test_status_reads_a_home_whose_name_holds_uri_characters(tiny, tmp_path, monkeypatch):
    """`P2W_HOME=/data/p2w#1?x`: the read-only SQLite URI cut the path at '#' and failed."""
    home = tmp_path / "p2w #1?x=y"
    monkeypatch.setenv("P2W_HOME", str(home))
    _photo(tmp_path / "photos" / "a.jpg", 0)
    assert runner.invoke(app, ["index", str(tmp_path / "photos"), *_tiny(tiny), "--workers", "0"]).exit_code == 0
    done = runner.invoke(app, ["status", "--json"])
    assert done.exit_code == 0, done.output
    (info,) = json.loads(done.stdout)
    assert info["files"] == 1 and info["folder"].startswith(str(home))
