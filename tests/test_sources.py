"""`p2w.core.sources`: folders, path lists and webdataset shards planned into parts and read as samples — real files
written here (PIL images, tar shards in img2dataset's naming), every bad input counted by reason, never fatal."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from p2w.core.sources import Part, Problems, Sample, expand_braces, plan, read
from p2w.errors import P2WError


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (seed * 37 % 256, seed * 91 % 256, 128)).save(buf, "JPEG")
    return buf.getvalue()


def photos(folder: Path, names: Sequence[str]) -> list[Path]:
    paths = []
    for seed, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(seed))
        paths.append(path)
    return paths


def shard(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    """A webdataset shard holding ``members`` (name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(first: int, count: int) -> list[tuple[str, bytes]]:
    """img2dataset's members: KEY.jpg, KEY.txt, KEY.json for keys 000000000, 000000001, ..."""
    members = []
    for n in range(first, first + count):
        key = f"{n:09d}"
        meta = json.dumps({"key": key, "width": 16}).encode()
        members += [(f"{key}.jpg", jpeg(n)), (f"{key}.txt", f"caption {n}".encode()), (f"{key}.json", meta)]
    return members


def read_all(parts: Sequence[Part], problems: Problems | None = None) -> list[Sample]:
    problems = problems if problems is not None else Problems()
    return [sample for part in parts for sample in read(part, problems)]


def test_a_folder_is_walked_sorted_and_split_into_parts(tmp_path: Path) -> None:
    made = photos(tmp_path / "photos", ["b.jpg", "a/2.png", "a/1.jpg", "c/d/e.webp", "z.jpg", ".hidden.jpg"])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    got = plan([str(tmp_path / "photos")], rows_per_part=2)
    expected = sorted(str(p) for p in made if not p.name.startswith("."))
    assert [len(p.rows) for p in got.parts] == [2, 2, 1]
    assert [p.id for p in got.parts] == [0, 1, 2]
    assert {(p.kind, p.source) for p in got.parts} == {("files", str(tmp_path / "photos"))}
    assert [row.path for p in got.parts for row in p.rows] == expected
    read_back = read_all(got.parts)
    assert [(s.key, s.path, s.data, s.caption, s.meta) for s in read_back] == [(p, p, None, None, {}) for p in expected]
    [entry] = got.inputs
    assert entry["kind"] == "folder"
    assert entry["size"] == sum(os.path.getsize(p) for p in expected)
    assert entry["mtime_ns"] == max(os.stat(p).st_mtime_ns for p in expected)
    assert len(got.problems) == 0
    images = plan([str(tmp_path / "photos" / "*.jpg")])  # images named directly: one "files" source
    assert [row.path for p in images.parts for row in p.rows] == [
        str(tmp_path / "photos" / n) for n in ("b.jpg", "z.jpg")
    ]
    assert (images.inputs[0]["kind"], images.inputs[0]["matches"]) == ("image", 2)


def test_a_txt_list_skips_comments_and_resolves_relative_paths(tmp_path: Path) -> None:
    made = photos(tmp_path / "data", ["img/a.jpg", "img/b.jpg"])
    elsewhere = photos(tmp_path / "other", ["c.jpg"])[0]
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"# my photos\nimg/a.jpg\n\n  ./img/b.jpg  \n{elsewhere}\n")
    got = plan([str(listing)])
    [part] = got.parts
    assert (part.kind, part.source) == ("files", str(listing))
    assert [(row.path, row.line) for row in part.rows] == [(str(made[0]), 2), (str(made[1]), 4), (str(elsewhere), 5)]
    assert got.inputs == [
        {"source": str(listing), "kind": "list", "size": listing.stat().st_size, "mtime_ns": listing.stat().st_mtime_ns,
         "matches": 1}
    ]  # fmt: skip


def test_csv_and_tsv_lists_take_path_caption_and_meta_columns(tmp_path: Path) -> None:
    made = photos(tmp_path, ["a.jpg", "b.jpg"])
    with (tmp_path / "list.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["Image_Path", "caption", "url"], ["a.jpg", "a dog, running", "http://x/a"]])
    (tmp_path / "list.tsv").write_text("id\ttext\tpath\n7\ta cat\tb.jpg\n8\t\ta.jpg\n")
    rows = [row for part in plan([str(tmp_path / "list.csv"), str(tmp_path / "list.tsv")]).parts for row in part.rows]
    assert [(r.path, r.caption, r.meta, r.line) for r in rows] == [
        (str(made[0]), "a dog, running", {"url": "http://x/a"}, 2),
        (str(made[1]), "a cat", {"id": "7"}, 2),
        (str(made[0]), None, {"id": "8"}, 3),
    ]
    [sample] = read_all(plan([str(tmp_path / "list.csv")]).parts)
    assert (sample.key, sample.path, sample.caption, sample.meta) == (str(made[0]),) * 2 + (
        "a dog, running",
        rows[0].meta,
    )


def test_the_reference_csv_is_a_list_of_paths_and_captions(tmp_path: Path) -> None:
    made = photos(tmp_path / "cc3m", ["0.jpg", "1.jpg", "2.jpg"])
    listing = tmp_path / "cc3m" / "train.csv"
    listing.write_text("filepath\ttitle\n2.jpg\tsunset over a lake\n0.jpg\ta red car\n\n1.jpg\tan old man\n")
    rows = [row for part in plan([str(listing)]).parts for row in part.rows]
    assert [Path(r.path) for r in rows] == [made[2], made[0], made[1]]  # relative to the list's folder, in its order
    assert [r.caption for r in rows] == ["sunset over a lake", "a red car", "an old man"]
    assert all(r.meta == {} for r in rows)


def test_a_parquet_list_is_read_in_batches_with_named_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    made = photos(tmp_path, ["a.jpg", "b.jpg"])
    table = pa.table({"file": ["a.jpg", "b.jpg", None], "alt": ["one", None, "three"], "width": [16, 16, 8]})
    pq.write_table(table, tmp_path / "list.parquet", row_group_size=1)
    got = plan([str(tmp_path / "list.parquet")], path_column="file", caption_column="alt")
    rows = [row for part in got.parts for row in part.rows]
    assert [(r.path, r.caption, r.meta, r.line) for r in rows] == [
        (str(made[0]), "one", {"width": 16}, 1),
        (str(made[1]), None, {"width": 16}, 2),
    ]
    assert got.problems.counts() == {"no path": 1}
    assert got.problems.examples("no path") == [f"{tmp_path / 'list.parquet'}:row 3"]


def test_a_list_without_a_path_column_names_its_columns_and_the_option(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("url,caption\nhttp://x/a.jpg,a dog\n")
    with pytest.raises(P2WError, match=r"has no path column .*url, caption.*--path-column"):
        plan([str(tmp_path / "list.csv")])
    with pytest.raises(P2WError, match=r"has no column 'file' \(it has: url, caption\); pass --path-column"):
        plan([str(tmp_path / "list.csv")], path_column="file")
    with pytest.raises(P2WError, match=r"has no column 'alt'.*--caption-column"):
        plan([str(tmp_path / "list.csv")], path_column="url", caption_column="alt")


def test_braces_expand_ranges_with_padding_and_lists() -> None:
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{8..10}") == ["8", "9", "10"]
    assert expand_braces("{08..10}") == ["08", "09", "10"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert expand_braces("{a,b}/{0..1}-{x,y}.tar") == [
        f"{d}/{n}-{e}.tar" for d in "ab" for n in "01" for e in "xy"
    ]  # fmt: skip
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("{x}/{}/{1..2}") == ["{x}/{}/1", "{x}/{}/2"]


def test_shards_named_by_a_pattern_are_streamed_in_order(tmp_path: Path) -> None:
    for n in range(3):
        shard(tmp_path / f"{n:05d}.tar", samples(n * 2, 2))
    got = plan([str(tmp_path / "{00000..00002}.tar")])
    assert [(p.id, p.kind, p.source, p.rows) for p in got.parts] == [
        (n, "tar", str(tmp_path / f"{n:05d}.tar"), ()) for n in range(3)
    ]
    problems = Problems()
    read_back = read_all(got.parts, problems)
    assert [(s.key, s.path, s.caption) for s in read_back] == [(f"{n:09d}", None, f"caption {n}") for n in range(6)]
    assert [s.meta for s in read_back] == [{"key": f"{n:09d}", "width": 16} for n in range(6)]
    assert all(s.data is not None and Image.open(io.BytesIO(s.data)).size == (16, 12) for s in read_back)
    assert len(problems) == 0
    [entry] = got.inputs
    assert (entry["kind"], entry["matches"]) == ("tar", 3)
    assert entry["size"] == sum((tmp_path / f"{n:05d}.tar").stat().st_size for n in range(3))
    assert [p.source for p in plan([str(tmp_path / "*.tar")]).parts] == [p.source for p in got.parts]


def test_a_shard_member_takes_the_first_image_kind_and_skips_other_members(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("L", (4, 4)).save(png, "PNG")
    members = [("x/000000000.png", png.getvalue()), ("x/000000000.cls", b"3"), ("x/000000000.JPG", jpeg(1))]
    [sample] = read_all(plan([str(shard(tmp_path / "00000.tar", members))]).parts)
    assert (sample.key, sample.data, sample.caption, sample.meta) == ("x/000000000", jpeg(1), None, {})


def test_missing_sources_and_empty_patterns_fail_before_any_work(tmp_path: Path) -> None:
    shard(tmp_path / "00000.tar", samples(0, 1))
    shard(tmp_path / "00002.tar", samples(1, 1))
    with pytest.raises(P2WError, match=r"source not found: .*nope"):
        plan([str(tmp_path / "00000.tar"), str(tmp_path / "nope")])
    with pytest.raises(P2WError, match="matches nothing"):
        plan([str(tmp_path / "{00005..00009}.tar")])
    with pytest.raises(P2WError, match="matches nothing"):
        plan([str(tmp_path / "*.parquet")])
    with pytest.raises(P2WError, match=r"1 of the 3 paths .* do not exist \(the first: .*00001.tar\)"):
        plan([str(tmp_path / "{00000..00002}.tar")])
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(P2WError, match=r"notes\.md is not a folder, a list"):
        plan([str(tmp_path / "notes.md")])
    with pytest.raises(P2WError, match="no images in"):
        plan([str((tmp_path / "empty").mkdir() or tmp_path / "empty")])


def test_bad_shard_members_are_counted_and_the_rest_kept(tmp_path: Path) -> None:
    members = dict(samples(0, 4))
    del members["000000001.jpg"]  # a key without an image
    members["000000002.txt"] = b"caf\xe9"  # Latin-1, not UTF-8
    members["000000003.json"] = b"{not json"
    path = shard(tmp_path / "00000.tar", list(members.items()))
    problems = Problems()
    read_back = read_all(plan([str(path)]).parts, problems)
    assert [(s.key, s.caption, s.meta) for s in read_back] == [
        ("000000000", "caption 0", {"key": "000000000", "width": 16}),
        ("000000002", None, {"key": "000000002", "width": 16}),
        ("000000003", "caption 3", {}),
    ]
    assert problems.counts() == {"no image": 1, "caption not UTF-8": 1, "bad json": 1}
    assert problems.examples("no image") == [f"{path}:000000001"]


def test_a_truncated_shard_keeps_what_was_read_before(tmp_path: Path) -> None:
    path = shard(tmp_path / "00000.tar", samples(0, 4))
    whole = path.read_bytes()
    third = whole.index(jpeg(2))  # the third sample's image: cut in its middle
    path.write_bytes(whole[: third + 100])
    problems = Problems()
    assert [s.key for s in read_all(plan([str(path)]).parts, problems)] == ["000000000", "000000001"]
    assert problems.counts() == {"unreadable shard": 1}
    assert problems.examples("unreadable shard")[0].startswith(f"{path} (")
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # where the end-of-archive blocks begin
    for cut in (third - 512, end):  # at a member's header: tarfile alone would take either for the end
        path.write_bytes(whole[:cut])
        problems = Problems()
        read_all(plan([str(path)]).parts, problems)
        assert problems.counts() == {"unreadable shard": 1}, cut


def test_list_rows_whose_files_are_missing_are_counted_when_read(tmp_path: Path) -> None:
    made = photos(tmp_path, ["a.jpg", "c.jpg"])
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"path,caption\na.jpg,fine\nb.jpg,gone\nc.jpg,caf\xe9\n,no path here\n")
    got = plan([str(listing)])
    assert got.problems.counts() == {"caption not UTF-8": 1, "no path": 1}
    assert got.problems.examples("no path") == [f"{listing}:5"]
    problems = Problems()
    assert [(s.key, s.caption) for s in read_all(got.parts, problems)] == [(str(made[0]), "fine"), (str(made[1]), None)]
    assert problems.counts() == {"not found": 1}
    assert problems.examples("not found") == [f"{listing}:3: {tmp_path / 'b.jpg'}"]


def test_unreadable_folder_entries_are_problems_of_the_plan(tmp_path: Path) -> None:
    photos(tmp_path, ["a.jpg"])
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    got = plan([str(tmp_path)])
    assert got.problems.counts() == {"unreadable file": 1}
    assert got.problems.examples("unreadable file")[0].startswith(str(tmp_path / "loop.jpg"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder")
def test_a_folder_that_cannot_be_listed_is_a_problem(tmp_path: Path) -> None:
    photos(tmp_path, ["a.jpg", "locked/b.jpg"])
    (tmp_path / "locked").chmod(0)
    try:
        got = plan([str(tmp_path)])
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert got.problems.counts() == {"unlistable folder": 1}
    assert [row.path for row in got.parts[0].rows] == [str(tmp_path / "a.jpg")]


def test_a_file_url_is_read_through_fsspec(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    for n in range(2):
        shard(tmp_path / f"{n:05d}.tar", samples(n * 3, 3))
    got = plan([f"file://{tmp_path}/{{00000..00001}}.tar"])
    assert [p.source for p in got.parts] == [f"file://{tmp_path}/0000{n}.tar" for n in range(2)]
    assert got.inputs[0]["size"] is None
    via_url = read_all(got.parts)
    assert via_url == read_all(plan([str(tmp_path / "{00000..00001}.tar")]).parts)
    assert len(via_url) == 6
    problems = Problems()
    assert read_all(plan([f"file://{tmp_path}/00009.tar"]).parts, problems) == []  # not checked when planned
    assert problems.counts() == {"unreadable shard": 1}


def test_url_schemes_without_a_backend_are_refused_when_planned() -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(P2WError, match=r"cannot read nosuch://x/0\.tar: Protocol not known"):
        plan(["nosuch://x/0.tar"])
    with pytest.raises(P2WError, match=r"only webdataset shards"):
        plan(["file:///data/list.parquet"])
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(P2WError, match=r"Install s3fs to access S3 \(pip install s3fs\)"):
            plan(["s3://bucket/{00000..00001}.tar"])


def test_the_same_sources_make_the_same_plan(tmp_path: Path) -> None:
    photos(tmp_path / "photos", [f"{n}/{m}.jpg" for n in range(3) for m in range(4)])
    (tmp_path / "list.txt").write_text("".join(f"photos/{n}/0.jpg\n" for n in range(3)))
    shard(tmp_path / "00000.tar", samples(0, 2))
    sources = [str(tmp_path / "photos"), str(tmp_path / "00000.tar"), str(tmp_path / "list.txt")]
    first, second = plan(sources, rows_per_part=5), plan(sources, rows_per_part=5)
    assert first.parts == second.parts
    assert first.inputs == second.inputs
    assert [(p.id, p.kind, len(p.rows)) for p in first.parts] == [(0, "files", 5), (1, "files", 5), (2, "files", 2),
                                                                  (3, "tar", 0), (4, "files", 3)]  # fmt: skip


def test_parts_and_problems_survive_pickle() -> None:
    problems = Problems()
    for n in range(7):
        problems.add("not found", f"list.txt:{n}")
    problems.add("bad json", "s.tar:000000001")
    back = pickle.loads(pickle.dumps(problems))
    assert back.counts() == problems.counts() == {"not found": 7, "bad json": 1}
    back.merge(problems)
    assert back.counts() == {"not found": 14, "bad json": 2}
    assert len(back.examples("not found")) == 5
    assert back.to_json()["bad json"] == {"count": 2, "examples": ["s.tar:000000001"] * 2}
    part = plan_part()
    assert pickle.loads(pickle.dumps(part)) == part


def plan_part() -> Part:
    from p2w.core.sources import Row

    return Part(3, "files", "list.csv", (Row("/a.jpg", "a dog", {"url": "http://x"}, 2), Row("/b.jpg", line=3)))


def test_a_million_row_list_is_planned_without_its_files(tmp_path: Path) -> None:
    listing = tmp_path / "big.txt"
    listing.write_text("".join(f"img/{n:07d}.jpg\n" for n in range(1_000_000)))
    got = plan([str(listing)], rows_per_part=30_000)
    assert [len(p.rows) for p in got.parts] == [30_000] * 33 + [10_000]
    assert got.parts[-1].rows[-1].path == str(tmp_path / "img" / "0999999.jpg")
    assert len(got.problems) == 0


def test_a_folder_of_shards_is_read_as_its_shards(tmp_path):
    """img2dataset's output folder: 00000.tar, 00000.parquet, 00000_stats.json, ..."""
    import io as _io
    import tarfile as _tarfile

    from PIL import Image as _Image

    out = tmp_path / "img2dataset-out"
    out.mkdir()
    for shard in range(2):
        with _tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            buffer = _io.BytesIO()
            _Image.new("RGB", (8, 8), "red").save(buffer, format="JPEG")
            info = _tarfile.TarInfo(f"{shard:05d}0000.jpg")
            info.size = len(buffer.getvalue())
            tar.addfile(info, _io.BytesIO(buffer.getvalue()))
        (out / f"{shard:05d}_stats.json").write_text("{}")
        (out / f"{shard:05d}.parquet").write_bytes(b"")
    found = plan([str(out)])
    assert [(p.kind, Path(p.source).name) for p in found.parts] == [("tar", "00000.tar"), ("tar", "00001.tar")]
    assert [s.key for p in found.parts for s in read(p, Problems())] == ["000000000", "000010000"]
