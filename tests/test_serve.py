"""`p2w serve` through a real uvicorn server on 127.0.0.1: the API, what it refuses, and warm `p2w search`."""

from __future__ import annotations

import json
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
        for path in ("/api/status", "/api/photo/999999"):  # answered, and refused: both say their time in the app
            timing = server.request(path)[1]["server-timing"]
            assert timing.startswith("app;dur=") and float(timing.removeprefix("app;dur=")) > 0, timing
        image = sorted((catalog / "2024").glob("*.jpg"))[0].read_bytes()
        search = json.dumps({"text": "a red photo", "k": 3}).encode()
        for path, body, stages in (
            ("/api/upload", image, ["app", "decode", "preprocess", "tower"]),
            ("/api/search", search, ["app", "reference", "compose", "ann"]),
        ):
            status, headers, _ = server.request(path, body, {"Content-Type": "application/octet-stream"})
            entries = [entry.split(";dur=") for entry in headers["server-timing"].split(", ")]
            assert status == 200 and [name for name, _ in entries] == stages, headers["server-timing"]
            assert all(float(ms) >= 0 for _, ms in entries)
        status, answer = server.json("/api/search", {"text": "a red photo", "k": 5})
        assert status == 200 and len(answer["results"]) == 5
        photo = answer["results"][0]["id"]
        status, refined = server.json("/api/search", {"photo": photo, "text": "in blue", "k": 5})
        assert status == 200 and [h["rank"] for h in refined["results"]] == [1, 2, 3, 4, 5]


def _search(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["-v", "search", *args])
    return result.exit_code, result.stdout, result.stderr


def test_warm_search_prints_what_the_in_process_search_prints(catalog, tiny, p2w_home):
    """Same results, same order, same JSON and table, the same errors, through the server or not, over the options:
    a script that works without a server works the same with one (`-k 500` was refused with the server's per-request
    limit of 200); the warm path loads no model."""
    query = sorted((catalog / "2024").glob("*.jpg"))[3]
    other_image = sorted((catalog / "2025").glob("*.jpg"))[5]
    mapper = ["--mapper", str(tiny.mapper)]
    answered = [  # (case, answered by the server)
        ([str(query), "in red", "--json", *mapper], True),
        ([str(query), "--json"], True),
        (["a red photo", "--json", "-k", "7"], True),
        ([str(query), "brighter", "--mode", "average", "--in", str(catalog / "2025")], True),
        ([str(query), "in red", "--paths", *mapper, "--prompt", "a * that is {text}"], True),
        ([str(query), str(other_image), "--json", *mapper, "--prompt", "a * wearing the hat of *"], True),
        ([str(query), str(other_image), "smaller", "--mode", "average", "--prompt", "{text}", "--json"], True),
        (["a red photo", "--paths", "-k", "500"], False),  # over the server's k: searched here, the same output
        (["a red photo", "--json", "--ef", "20000"], False),
        ([str(query), "in red", "--json", "--mode", "text", "-k", "3", "--in", str(catalog / "2024")], True),
        ([str(query), "in red", "--json", "--mode", "slerp", "--alpha", "0.3"], True),
        ([str(query), str(other_image), "in red", "--json", "--mode", "weighted"], True),
    ]
    refused = [  # the same one-line error either way
        [str(query), "in red", *mapper, "--prompt", "a photo without a star {text}"],
        [str(query), "in red", "--mode", "sideways"],
        [str(query), "in red", "--mode", "slerp", "--alpha", "1.2"],
        ["a red photo", "--in", str(catalog / "nowhere")],
    ]
    cases = [c for c, _ in answered] + refused
    cold = [_search(*c, *backbone_args(tiny), "--no-server") for c in cases]
    with running_server(p2w_home, [*backbone_args(tiny), *mapper]):
        warm = [_search(*c, *backbone_args(tiny)) for c in cases]
        other = _search(str(query), "in red", *backbone_args(tiny), "--mapper", str(tiny.config))  # not a mapper
    for (c, served), (code, out, err), (wcode, wout, werr) in zip(answered, cold, warm, strict=False):
        assert code == wcode == 0, (c, err, werr)
        assert ("searched through p2w serve" in werr) == served and "searched through p2w serve" not in err, c
        assert wout == out, c
    assert len(json.loads(cold[8][1])) == 10 and len(cold[7][1].splitlines()) == 30  # all 30 photos for k=500
    for c, (code, out, err), (wcode, wout, werr) in zip(
        refused, cold[len(answered) :], warm[len(answered) :], strict=True
    ):
        error = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == wcode == 1 and out == wout == "" and error and error[-1] in werr.splitlines(), (c, err, werr)
    assert other[0] == 1 and "searched through p2w serve" not in other[2]  # another mapper: searched here


def test_warm_search_imports_no_torch(catalog, tiny, p2w_home):
    """Text, and an image with words and a mapper: the warm path reads the mapper's method from its header alone."""
    import os
    import subprocess
    import sys

    image = str(sorted((catalog / "2024").glob("*.jpg"))[0])
    queries = [["a red photo"], [image, "in red", "--mapper", str(tiny.mapper)]]
    with running_server(p2w_home, [*backbone_args(tiny), "--mapper", str(tiny.mapper)]):
        env = {**os.environ, "P2W_HOME": str(p2w_home)}
        for query in queries:
            code = (
                "import sys\nfrom p2w.cli import app\n"
                f"try:\n    app(args={['search', *query, *backbone_args(tiny)]!r}, prog_name='p2w')\n"
                "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'numpy' in sys.modules)"
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            assert done.stdout.strip().splitlines()[-1] == "False False", (query, done.stdout + done.stderr)


def test_stale_records_are_ignored_and_removed(catalog, tiny, p2w_home):
    import json
    import os
    import socket

    from p2w.serve import discovery
    from p2w.settings import Settings

    settings = Settings.from_env()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    for pid in (dead, os.getpid()):  # a dead process, and a live one whose port refuses
        limits = {"upload_bytes": 1 << 20, "upload_pixels": 10**6, "k": 200, "ef": 10**4, "uploads_kept": 8}
        limits["images"] = 8
        record = discovery.ServerRecord(f"http://127.0.0.1:{port}", "t", pid, tiny.backbone_id, None, "0", limits)
        path = discovery.write(settings, record)
        code, out, err = _search("a red photo", "--json", *backbone_args(tiny))
        assert code == 0 and len(json.loads(out)) == 10, err
        assert "searched through p2w serve" not in err
        assert not path.exists()


def test_the_server_picks_up_new_photos_without_a_restart(catalog, tiny, p2w_home):
    with running_server(p2w_home, backbone_args(tiny)) as server:
        status, before = server.json("/api/search", {"text": "a photo", "k": 200})
        assert status == 200 and len(before["results"]) == 30
        make_photos(catalog / "2026", 5, seed=7)  # p2w index runs beside the server, as a user would
        added = runner.invoke(app, ["index", str(catalog), *backbone_args(tiny), "--workers", "0"])
        assert added.exit_code == 0, added.output
        assert server.json("/api/status")[1]["photos"] == 35
        status, after = server.json("/api/search", {"text": "a photo", "k": 200})
        assert status == 200 and len(after["results"]) == 35
        assert any("/2026/" in h["path"] for h in after["results"])


def test_the_engine_is_loaded_on_the_thread_that_runs_every_query(catalog, tiny, p2w_home):
    """PyTorch's OpenMP threads run fastest when one thread both loads the model and queries it (see ``start``)."""
    import threading

    import p2w
    from p2w.errors import P2WError
    from p2w.serve.requests import Query
    from p2w.serve.service import start
    from p2w.settings import Settings

    loaded_on: list[int] = []

    def load() -> p2w.Engine:
        loaded_on.append(threading.get_ident())
        return p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")

    service, worker = start(load, Settings.from_env())
    try:
        answer = worker.submit(service.search, Query(text="a red photo", k=3)).result()
        assert len(answer["results"]) == 3
        assert worker.submit(threading.get_ident).result() == loaded_on[0] != threading.get_ident()
    finally:
        worker.submit(service.close).result()
        worker.shutdown()

    def fails() -> p2w.Engine:
        raise P2WError("no such model")

    with pytest.raises(P2WError, match="no such model"):
        start(fails, Settings.from_env())


def test_what_is_checked_is_what_is_served(catalog, tiny_engine, p2w_home, tmp_path):
    """A photo swapped between the path's check and the open (simulated: the path check passes, as it did just
    before the swap): the open file itself is checked, so a symlink, a FIFO or another file is refused, promptly."""
    import os
    import threading

    from p2w.serve.service import NotFound, Service
    from p2w.settings import Settings

    photos = sorted((catalog / "2024").glob("*.jpg"))[:3]
    secret = tmp_path / "secret.bin"
    outcome: dict[str, list[str]] = {}

    from p2w.serve import service as service_module

    checking = service_module.servable

    def scenario() -> None:  # on a thread of its own, the Service's (so that a hung open fails the test, not CI)
        service = Service(tiny_engine, Settings.from_env())
        try:
            rows = service._open().rows_for(list(range(1, 31))).values()
            ids = {row.path: row.id for row in rows}
            for photo, swap in zip(photos, ("symlink", "fifo", "other file"), strict=True):
                pid = ids[str(photo)]
                original = service.original(pid)  # the control: served while it is the catalogued file
                with original.file:
                    assert original.file.read() == photo.read_bytes() and original.size == photo.stat().st_size
                checked = service_module.servable(service._gallery(), pid)  # the check, before the swap
                st = photo.stat()
                photo.unlink()
                if swap == "symlink":  # a secret of the same size and mtime, as a link-following stat would see
                    secret.write_bytes(b"s" * st.st_size)
                    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
                    photo.symlink_to(secret)
                elif swap == "fifo":  # opened without O_NONBLOCK, this would block the engine's thread for good
                    os.mkfifo(photo)
                else:
                    photo.write_bytes(b"x" * (st.st_size + 1))
                service_module.servable = lambda gallery, item, file=checked: file  # the swap after the check
                outcome[swap] = []
                for call in (service.original, service.thumbnail):
                    try:
                        call(pid)
                    except NotFound as exc:
                        outcome[swap].append(str(exc))
                service_module.servable = checking
        finally:
            service_module.servable = checking
            service.close()

    thread = threading.Thread(target=scenario, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), f"an open hung: {outcome}"
    assert list(outcome) == ["symlink", "fifo", "other file"], outcome
    for swap, refusals in outcome.items():
        assert len(refusals) == 2 and all("run p2w index again" in r for r in refusals), (swap, refusals)


def test_a_photo_whose_name_is_not_utf8_is_searched_and_served(catalog, tiny, p2w_home):
    """Its path crossed JSON (``ensure_ascii=False``) and a Content-Disposition header: both refused a surrogate."""
    import os
    import shutil

    from p2w import fspath

    odd = catalog / os.fsdecode(b"caf\xe9 latin1.jpg")
    shutil.copy(sorted((catalog / "2024").glob("*.jpg"))[0], odd)
    assert runner.invoke(app, ["index", str(catalog), *backbone_args(tiny), "--workers", "0"]).exit_code == 0
    with running_server(p2w_home, backbone_args(tiny)) as server:
        status, answer = server.json("/api/search", {"text": "a photo", "k": 200})
        assert status == 200
        (hit,) = [h for h in answer["results"] if "path_bytes" in h]
        assert fspath.from_json(hit) == str(odd) and hit["path"].endswith("caf\\xe9 latin1.jpg")
        status, headers, body = server.request(f"/api/photo/{hit['id']}")
        assert status == 200 and body == odd.read_bytes()
        assert "caf%5Cxe9" in headers["content-disposition"]
        code, out, err = _search(str(odd), "--json", "-k", "2", *backbone_args(tiny))  # warm: the exact path back
        assert code == 0 and "searched through p2w serve" in err, err
        assert str(odd) in {fspath.from_json(h) for h in json.loads(out)}  # it and its twin (same content) lead
