"""`p2w serve` through a real uvicorn server on 127.0.0.1: the API, what it refuses, and warm `p2w search`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2w.cli import app
from serving import backbone_args, make_photos, running_server

runner = CliRunner()


@pytest.fixture
def catalog(tmp_path: Path, tiny, p2w_home: Path) -> Path:
    """A folder of 30 photos indexed with the tiny model into ``p2w_home``."""
    photos = tmp_path / "photos"
    make_photos(photos / "2024", 15)
    make_photos(photos / "2025", 15, seed=1)
    result = runner.invoke(app, ["index", str(photos), *backbone_args(tiny), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return photos


def test_status_and_a_composed_search(catalog, tiny, p2w_home):
    with running_server(p2w_home, [*backbone_args(tiny), "--mapper", str(tiny.mapper)]) as server:
        status, info = server.json("/api/status")
        assert status == 200 and info["photos"] == 30 and info["backbone"] == tiny.backbone_id
        status, answer = server.json("/api/search", {"text": "a red photo", "k": 5})
        assert status == 200 and len(answer["results"]) == 5
        photo = answer["results"][0]["id"]
        status, refined = server.json("/api/search", {"photo": photo, "text": "in blue", "k": 5})
        assert status == 200 and [h["rank"] for h in refined["results"]] == [1, 2, 3, 4, 5]
