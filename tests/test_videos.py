"""Videos in the catalog: frames sampled, near-identical ones dropped, embedded with the embedded micro model; a result
names the video and the time; grouped; incremental; corrupt ones skipped; served by ``p2w serve``. Every video is
written by the test itself (PyAV)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from media import item, write_video
from p2w.cli import app
from p2w.core import video as video_mod
from p2w.core.video import VideoError, frames
from serving import running_server

av = pytest.importorskip("av")
runner = CliRunner()
MICRO = ["--model", "p2w-micro-fashion"]


def test_frames_are_sampled_and_repeats_dropped(tmp_path):
    red, green = item(0, 0), item(1, 3)
    clip = write_video(tmp_path / "clip.mp4", [(red, 2.0), (green, 3.0), (red, 2.0)])
    assert [f.time for f in frames(clip, every=1.0)] == [0.0, 2.0, 5.0]  # one frame a scene: repeats dropped
    assert [f.time for f in frames(clip, every=4.0)] == [0.0, 4.0]  # 4.0 is green; 8.0 is past the end
    with pytest.raises(VideoError, match="time limit"):
        list(frames(clip, every=0.1, limit=0.0))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 3])
    with pytest.raises(VideoError):
        list(frames(broken))
    (tmp_path / "junk.mov").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="cannot be decoded"):
        list(frames(tmp_path / "junk.mov"))


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Two photos; a video whose first and last scenes show item 2 in blue, its middle one item 3 in green; a corrupt
    video."""
    root = tmp_path / "library"
    root.mkdir()
    Image.fromarray(item(4, 1)).save(root / "photo a.png")
    Image.fromarray(item(5, 6)).save(root / "photo b.png")
    write_video(root / "holiday.mp4", [(item(2, 5), 2.0), (item(3, 3), 2.0), (item(2, 5), 2.0)])
    (root / "broken.mov").write_bytes(b"\x00\x00\x00\x18ftypqt  " + os.urandom(2000))
    Image.fromarray(item(3, 3)).save(tmp_path / "query green.png")
    Image.fromarray(item(2, 5)).save(tmp_path / "query blue.png")
    return root


def search(*args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["search", *args, "--json", "--no-server", *MICRO])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def test_a_video_is_found_at_its_time_grouped_and_indexed_once(library, monkeypatch):
    first = runner.invoke(app, ["index", str(library), *MICRO, "--workers", "0", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["added"] == 3 and report["total"] == 5  # two photos, the video's three frames
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.mov"]
    assert "cannot be decoded" in report["skipped"][0]["reason"]
    green = search(str(library.parent / "query green.png"), "-k", "1")[0]
    assert (Path(green["path"]).name, green["time"], green["times"]) == ("holiday.mp4", 2.0, [2.0])
    blue = search(str(library.parent / "query blue.png"), "-k", "3")
    assert Path(blue[0]["path"]).name == "holiday.mp4" and sorted(blue[0]["times"][:2]) == [0.0, 4.0]  # both blue
    assert [Path(h["path"]).name for h in blue].count("holiday.mp4") == 1
    assert blue[0]["taken_from"] == "mtime"
    table = runner.invoke(app, ["search", str(library.parent / "query green.png"), "-k", "1", "--no-server", *MICRO])
    assert "holiday.mp4 @ 00:02" in table.stdout
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert (status[0]["files"], status[0]["videos"]) == (3, 1)  # two photos and a video of three frames
    groups = json.loads(runner.invoke(app, ["duplicates", *MICRO, "--json"]).stdout)  # frames 0 and 4 are alike,
    assert not any("holiday.mp4" in p["path"] for g in groups for p in g["photos"])  # but not near-duplicate photos

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a video was decoded again")

    monkeypatch.setattr(video_mod, "frames", no_decoding)
    monkeypatch.setattr("p2w.library.videos.frames", no_decoding)
    again = json.loads(runner.invoke(app, ["index", str(library), *MICRO, "--workers", "0", "--json"]).stdout)
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 3)  # the video unchanged, not decoded
    write_video(library / "later.mp4", [(item(6, 2), 1.0)])
    off = json.loads(runner.invoke(app, ["index", str(library), *MICRO, "--no-videos", "--json"]).stdout)
    assert (off["added"], off["removed"], off["total"]) == (0, 0, 5)  # videos neither added nor dropped


def test_the_server_shows_a_frame_and_serves_the_video(library, tmp_path):
    assert runner.invoke(app, ["index", str(library), *MICRO, "--workers", "0"]).exit_code == 0
    home = Path(os.environ["P2W_HOME"])
    with running_server(home, MICRO) as server:
        status, answer = server.json("/api/search", {"text": "a blue pullover", "k": 10})
        assert status == 200
        frame = next(h for h in answer["results"] if h.get("time") is not None)
        assert Path(frame["path"]).name == "holiday.mp4" and frame["local"]
        thumb = server.request(f"/api/thumb/{frame['id']}")
        assert thumb[0] == 200 and thumb[2].startswith(b"\xff\xd8")  # a JPEG of the frame
        original = server.request(f"/api/photo/{frame['id']}")
        assert original[0] == 200 and original[2] == (library / "holiday.mp4").read_bytes()
        query = str(library.parent / "query blue.png")
        warm = runner.invoke(app, ["search", query, "--json", "-k", "3", *MICRO])  # answered by the server
        assert warm.exit_code == 0, warm.output
    cold = search(query, "-k", "3")
    keys = ("path", "time", "times", "taken", "taken_from")
    assert [{k: h.get(k) for k in keys} for h in json.loads(warm.stdout)] == [{k: h.get(k) for k in keys} for h in cold]
