"""`p2w eval` on small datasets cut from the real annotation files (tests/data/annotations), with stand-in images."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import p2w
from p2w.cli import app
from p2w.core.compose import DEFAULT_ALPHA, MODES
from p2w.evaluation import cirr, fashioniq

runner = CliRunner()
DATA = Path(__file__).resolve().parent / "data" / "annotations"


def picture(path: Path, seed: int) -> None:
    """A distinct stand-in image: a random background colour with coloured blocks (noise images all look alike to a
    tiny random CLIP, and their near-tied scores would make rankings depend on float rounding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.zeros((40, 36, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 255, 3)
    for _ in range(3):
        y, x = rng.integers(0, 28), rng.integers(0, 24)
        pixels[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def fiq(tmp_path) -> Path:
    """5 queries per category; the gallery is their images plus 10 more ids of the real split; .png and .jpg mixed."""
    root = tmp_path / "fashion-iq"
    for c in fashioniq.CATEGORIES:
        caps = json.loads((DATA / "fashioniq" / "captions" / f"cap.{c}.val.json").read_text())[:5]
        split = json.loads((DATA / "fashioniq" / "image_splits" / f"split.{c}.val.json").read_text())
        gallery = list(dict.fromkeys([x for q in caps for x in (q["candidate"], q["target"])] + split[:10]))
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions" / f"cap.{c}.val.json").write_text(json.dumps(caps))
        (root / "image_splits" / f"split.{c}.val.json").write_text(json.dumps(gallery))
        for i, asin in enumerate(gallery):
            picture(root / "images" / f"{asin}{'.png' if i % 2 else '.jpg'}", zlib.crc32(asin.encode()))
    return root


def tiny_args(tiny) -> list[str]:
    return [
        "--model",
        str(tiny.config),
        "--pretrained",
        str(tiny.weights),
        "--mapper",
        str(tiny.mapper),
        "--device",
        "cpu",
        "--workers",
        "0",
    ]


def test_fashioniq_numbers_match_an_independent_computation(fiq, tiny, tmp_path):
    out = runner.invoke(
        app,
        [
            "eval",
            "fashioniq",
            "--data",
            str(fiq),
            *tiny_args(tiny),
            "--json",
            "--mode",
            "all",
            "--save-predictions",
            str(tmp_path / "pred.json"),
        ],
    )
    assert out.exit_code == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r["mode"] for r in results] == list(MODES)
    assert [r.get("alpha") for r in results] == [None] * 4 + [DEFAULT_ALPHA[m] for m in MODES[4:]]
    composed = results[0]
    assert set(composed["metrics"]) == {"dress", "shirt", "toptee", "average"}
    assert set(composed["metrics"]["dress"]) == {"R@1", "R@5", "R@10", "R@50", "R@100"}
    assert not any(composed["missing"].values())
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    caps = json.loads((fiq / "captions" / "cap.dress.val.json").read_text())
    gallery = json.loads((fiq / "image_splits" / "split.dress.val.json").read_text())
    img = lambda a: fashioniq.image_path(fiq, a)  # noqa: E731
    g = engine.encode_images([img(a) for a in gallery])
    q = engine.encode_queries(
        [img(x["candidate"]) for x in caps], [f"{x['captions'][1]} and {x['captions'][0]}" for x in caps]
    )
    ranks = [(g @ q[i] > g[gallery.index(x["target"])] @ q[i]).sum() for i, x in enumerate(caps)]
    for k in (1, 5, 10):
        assert composed["metrics"]["dress"][f"R@{k}"] == pytest.approx(100 * np.mean(np.array(ranks) < k), abs=1e-4)
    # slerp reads the joined captions as written (the authors' text), at the published alpha
    q = engine.encode_queries(
        [img(x["candidate"]) for x in caps], [f"{x['captions'][1]} and {x['captions'][0]}" for x in caps], mode="slerp"
    )
    ranks = [(g @ q[i] > g[gallery.index(x["target"])] @ q[i]).sum() for i, x in enumerate(caps)]
    for k in (1, 5, 10):
        assert results[4]["metrics"]["dress"][f"R@{k}"] == pytest.approx(100 * np.mean(np.array(ranks) < k), abs=1e-4)
    preds = json.loads((tmp_path / "pred.json").read_text())
    assert set(preds) == {
        "pic2word",
        "image",
        "text",
        "average",
        "slerp a=0.8",
        "weighted a=0.8",
        "pic2word-slerp a=0.85",
    }
    assert len(preds["pic2word"]["dress"]) == 5 and preds["pic2word"]["dress"][0][0] in gallery


def test_fashioniq_missing_images_are_counted_or_refused(fiq, tiny):
    caps = json.loads((fiq / "captions" / "cap.shirt.val.json").read_text())
    fashioniq.image_path(fiq, caps[0]["candidate"]).unlink()
    out = runner.invoke(
        app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--json", "--category", "shirt"]
    )
    assert out.exit_code == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["missing"] == {"shirt_gallery_images": 1, "shirt_queries": 1}
    assert set(result["metrics"]) == {"shirt", "average"}
    strict = runner.invoke(
        app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--category", "shirt", "--strict"]
    )
    assert strict.exit_code == 1 and "--strict" in strict.stderr


def test_features_are_cached_across_modes_and_runs(fiq, tiny, monkeypatch):
    assert (
        runner.invoke(app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--mode", "image"]).exit_code
        == 0
    )
    monkeypatch.setattr("p2w.core.features.open_image", lambda *a, **k: pytest.fail("an image was decoded again"))
    again = runner.invoke(app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--mode", "average"])
    assert again.exit_code == 0, again.stderr


@pytest.fixture
def cirr_data(tmp_path) -> Path:
    """6 val queries with every image their img_set, reference and target name."""
    root = tmp_path / "cirr"
    caps = json.loads((DATA / "cirr" / "captions" / "cap.rc2.val.json").read_text())[:6]
    split = json.loads((DATA / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    names = {n for q in caps for n in [q["reference"], q["target_hard"], *q["img_set"]["members"]]}
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir(parents=True)
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(caps))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps({n: split[n] for n in sorted(names)}))
    for n in names:
        picture(root / split[n], zlib.crc32(n.encode()))
    return root


def test_cirr_recall_and_subset_recall(cirr_data, tiny):
    out = runner.invoke(app, ["eval", "cirr", "--data", str(cirr_data), *tiny_args(tiny), "--json"])
    assert out.exit_code == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["metrics"]) == {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"}
    assert result["missing"] == {"gallery_images": 0, "queries": 0}
    assert result["metrics"]["R@50"] == 100.0 and result["metrics"]["Rsubset@3"] >= result["metrics"]["Rsubset@1"]
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    caps = json.loads((cirr_data / "captions" / "cap.rc2.val.json").read_text())
    split = json.loads((cirr_data / "image_splits" / "split.rc2.val.json").read_text())
    names = list(split)
    g = engine.encode_images([cirr_data / split[n] for n in names])
    q = engine.encode_queries([cirr_data / split[x["reference"]] for x in caps], [x["caption"] for x in caps])
    hits = 0
    for i, x in enumerate(caps):
        scores = g @ q[i]
        scores[names.index(x["reference"])] = -np.inf
        hits += int((scores > scores[names.index(x["target_hard"])]).sum() < 1)
    assert result["metrics"]["R@1"] == pytest.approx(100 * hits / len(caps), abs=1e-4)


def test_cirr_test_split_writes_server_files(cirr_data, tiny, tmp_path):
    caps = json.loads((cirr_data / "captions" / "cap.rc2.val.json").read_text())
    for q in caps:
        del q["target_hard"], q["target_soft"]
    (cirr_data / "captions" / "cap.rc2.test1.json").write_text(json.dumps(caps))
    (cirr_data / "image_splits" / "split.rc2.test1.json").write_text(
        (cirr_data / "image_splits" / "split.rc2.val.json").read_text()
    )
    no_dir = runner.invoke(app, ["eval", "cirr", "--data", str(cirr_data), "--split", "test1", *tiny_args(tiny)])
    assert no_dir.exit_code == 1 and "--submission" in no_dir.stderr
    out = runner.invoke(
        app,
        [
            "eval",
            "cirr",
            "--data",
            str(cirr_data),
            "--split",
            "test1",
            *tiny_args(tiny),
            "--submission",
            str(tmp_path / "sub"),
        ],
    )
    assert out.exit_code == 0, out.stderr
    recall = json.loads((tmp_path / "sub" / "cirr-test1-pic2word-recall.json").read_text())
    subset = json.loads((tmp_path / "sub" / "cirr-test1-pic2word-recall_subset.json").read_text())
    assert recall["version"] == "rc2" and recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    first = str(caps[0]["pairid"])
    assert caps[0]["reference"] not in recall[first] and len(subset[first]) == 3
    assert set(subset[first]) <= set(caps[0]["img_set"]["members"]) - {caps[0]["reference"]}


def test_unknown_benchmark_and_missing_folder(tmp_path):
    out = runner.invoke(app, ["eval", "cocoa", "--data", str(tmp_path)])
    assert out.exit_code == 1 and "unknown benchmark 'cocoa'" in out.stderr and "coco" in out.stderr
    out = runner.invoke(app, ["eval", "coco", "--data", str(tmp_path), "--mode", "image"])
    assert out.exit_code == 1 and "instances_val2017.json" in out.stderr and "coco_eval.csv" in out.stderr
    out = runner.invoke(app, ["eval", "fashioniq", "--mode", "image"])
    assert out.exit_code == 1 and "needs --data" in out.stderr
    # a folder of the wrong layout is named before any mapper or model is looked for (none is set up here)
    for benchmark, expected in [
        ("fashioniq", "not a FashionIQ folder"),
        ("cirr", "not a CIRR folder"),
        ("circo", "not a CIRCO folder"),
        ("imagenet-r", "imgnet_real_query.txt"),
        ("micro-fashion", "dataset-fashion-mnist"),
    ]:
        out = runner.invoke(app, ["eval", benchmark, "--data", str(tmp_path)])
        assert out.exit_code == 1 and expected in out.stderr, (benchmark, out.stderr)
    out = runner.invoke(app, ["eval", "cirr", "--data", str(tmp_path / "nope"), "--mode", "image"])
    assert out.exit_code == 1 and "not found" in out.stderr
    assert cirr.KS == (1, 5, 10, 50)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    """The micro world's default folder (or any --data) missing: the error names the package and --data DIR."""
    out = runner.invoke(app, ["eval", "micro-fashion", "--data", str(tmp_path / "fashion-mnist")])
    assert out.exit_code == 1, out.stderr
    assert "apt-get install dataset-fashion-mnist" in out.stderr and "--data DIR" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_mode_all_is_one_table_with_a_row_per_mode(fiq, tiny):
    out = runner.invoke(app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--mode", "all"])
    assert out.exit_code == 0, out.stderr
    assert out.stdout.count("fashioniq val") == 1  # one title, so one table
    rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
    labels = ["pic2word", "image", "text", "average", "slerp a=0.8", "weighted a=0.8", "pic2word-slerp a=0.85"]
    for label in labels:
        assert sum(1 for line in rows if line.split("│")[1].strip() == label) == 4  # dress, shirt, toptee, average


def test_benchmark_options_of_another_benchmark_are_refused(fiq, tiny):
    out = runner.invoke(
        app, ["eval", "fashioniq", "--data", str(fiq), *tiny_args(tiny), "--mode", "image", "--query-style", "concept"]
    )
    assert out.exit_code == 1 and "fashioniq takes no --query-style" in out.stderr


@pytest.fixture
def imgnet(tmp_path) -> Path:
    """The reference's list files cut to 3 classes: 2 real queries each, up to 2 images per domain, the real ones."""
    root = tmp_path / "imgnet-data"
    queries = [line.split() for line in (DATA / "imagenet-r" / "imgnet_real_query.txt").read_text().splitlines()]
    targets = [line.split() for line in (DATA / "imagenet-r" / "imgnet_targets.txt").read_text().splitlines()]
    classes = sorted({int(label) for _, label in queries})[:3]
    q = [r for c in classes for r in [x for x in queries if int(x[1]) == c][:2]]
    t = [r for c in classes for d in (0, 1, 2, 3, 6) for r in [x for x in targets if int(x[1]) == c + 1000 * d][:2]]
    root.mkdir()
    (root / "imgnet_real_query.txt").write_text("".join(f"{p} {lab} \n" for p, lab in q))
    (root / "imgnet_targets.txt").write_text("".join(f"{p} {lab} \n" for p, lab in t))
    for p, _ in {(p, 0) for p, _ in [*q, *t]}:
        picture(root / p, zlib.crc32(p.encode()))
    return root


def test_imagenet_r_domain_recall(imgnet, tiny):
    out = runner.invoke(app, ["eval", "imagenet-r", "--data", str(imgnet), *tiny_args(tiny), "--json"])
    assert out.exit_code == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["metrics"]) == {"cartoon", "origami", "toy", "sculpture", "average"}
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    queries = [line.split() for line in (imgnet / "imgnet_real_query.txt").read_text().splitlines()]
    targets = [line.split() for line in (imgnet / "imgnet_targets.txt").read_text().splitlines()]
    g = engine.encode_images([imgnet / p for p, _ in targets])
    q = engine.encode_queries([imgnet / p for p, _ in queries], [None] * len(queries), prompt="a toy of *")
    recalls = []
    for i, (_, label) in enumerate(queries):
        relevant = [j for j, (_, lab) in enumerate(targets) if int(lab) == int(label) + 2000]
        top = np.argsort(-(g @ q[i]), kind="stable")[:10]
        recalls.append(len(set(top) & set(relevant)) / len(relevant) if relevant else 0.0)
    assert result["metrics"]["toy"]["R@10"] == pytest.approx(100 * np.mean(recalls), abs=1e-4)


def test_imagenet_r_predictions_keep_the_annotation_order(imgnet, tiny, tmp_path):
    """A query whose image is missing keeps its place in --save-predictions, as ``[]`` (docs/cli.md)."""
    queries = [line.split() for line in (imgnet / "imgnet_real_query.txt").read_text().splitlines()]
    (imgnet / queries[1][0]).unlink()
    pred = tmp_path / "pred.json"
    args = ["eval", "imagenet-r", "--data", str(imgnet), *tiny_args(tiny), "--json", "--save-predictions", str(pred)]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["missing"]["queries"] == 1
    for domain, rows in json.loads(pred.read_text()).items():
        assert len(rows) == len(queries) and rows[1] == [] and all(rows[i] for i in (0, 2)), domain


@pytest.fixture
def circo_data(tmp_path) -> Path:
    """CIRCO's layout: 4 queries with several ground truths, 16 'COCO unlabeled' images named by 12-digit id."""
    root = tmp_path / "CIRCO"
    ids = [1000 + 7 * i for i in range(16)]
    for i in ids:
        picture(root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg", i)
    queries = [
        {
            "reference_img_id": ids[n],
            "target_img_id": ids[n + 4],
            "relative_caption": f"has {n} more cats",
            "shared_concept": "a cat",
            "gt_img_ids": [ids[n + 4], ids[n + 8], ids[12]],
            "id": n,
        }
        for n in range(4)
    ]
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps(queries))
    return root


def test_circo_map_matches_an_independent_computation(circo_data, tiny):
    out = runner.invoke(app, ["eval", "circo", "--data", str(circo_data), *tiny_args(tiny), "--json"])
    assert out.exit_code == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["metrics"]) == {"mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5", "R@10", "R@25", "R@50"}
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    queries = json.loads((circo_data / "annotations" / "val.json").read_text())
    folder = circo_data / "COCO2017_unlabeled" / "unlabeled2017"
    files = sorted(folder.iterdir())
    g = engine.encode_images(files)
    q = engine.encode_queries(
        [folder / f"{x['reference_img_id']:012d}.jpg" for x in queries], [x["relative_caption"] for x in queries]
    )
    aps = []
    for i, x in enumerate(queries):
        order = [
            int(files[j].stem)
            for j in np.argsort(-(g @ q[i]), kind="stable")
            if int(files[j].stem) != x["reference_img_id"]
        ]
        hits = [int(o in x["gt_img_ids"]) for o in order[:5]]
        aps.append(sum(np.cumsum(hits)[k] / (k + 1) for k in range(5) if hits[k]) / min(5, len(x["gt_img_ids"])))
    assert result["metrics"]["mAP@5"] == pytest.approx(100 * np.mean(aps), abs=1e-4)


def test_circo_test_split_writes_the_submission(circo_data, tiny, tmp_path):
    queries = json.loads((circo_data / "annotations" / "val.json").read_text())
    test = [
        {k: v for k, v in x.items() if k in ("reference_img_id", "relative_caption", "shared_concept", "id")}
        for x in queries
    ]
    (circo_data / "annotations" / "test.json").write_text(json.dumps(test))
    out = runner.invoke(
        app,
        [
            "eval",
            "circo",
            "--data",
            str(circo_data),
            "--split",
            "test",
            *tiny_args(tiny),
            "--submission",
            str(tmp_path / "sub"),
            "--query-style",
            "concept",
        ],
    )
    assert out.exit_code == 0, out.stderr
    sub = json.loads((tmp_path / "sub" / "circo-test-pic2word.json").read_text())
    assert sorted(sub) == ["0", "1", "2", "3"] and len(sub["0"]) == 15 and test[0]["reference_img_id"] not in sub["0"]


def test_circo_gallery_names_need_not_be_twelve_digits(circo_data, tiny):
    """A --gallery folder of ``<id>.jpg`` or ``.png`` files: the ids are the numbers, whatever the padding."""
    args = ["eval", "circo", "--data", str(circo_data), *tiny_args(tiny), "--json", "--mode", "image"]
    before = runner.invoke(app, args)
    assert before.exit_code == 0, before.stderr
    folder = circo_data / "COCO2017_unlabeled" / "unlabeled2017"
    for i, path in enumerate(sorted(folder.iterdir())):
        path.rename(folder / f"{int(path.stem)}{'.png' if i % 2 else '.jpg'}")  # same bytes: same features
    after = runner.invoke(app, args)
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout)["metrics"] == json.loads(before.stdout)["metrics"]


# ---- COCO object composition ------------------------------------------------------------------------------------
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}]


def _box_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture
def coco_data(tmp_path) -> Path:
    """Five val2017 images: polygons and an uncompressed RLE, a grayscale image, one image whose only object is too
    large to be a query, one without annotations; ids out of order in the file."""
    root = tmp_path / "coco"
    images, anns = [], []
    specs = [  # image id, (h, w), grayscale, objects: (category, bbox)
        (139, (40, 48), False, [(1, (4.6, 5.2, 20.3, 16.9)), (18, (26.0, 20.0, 14.0, 12.0)), (1, (2, 2, 6, 6))]),
        (42, (36, 36), True, [(62, (10.0, 8.0, 12.5, 14.5))]),
        (7, (32, 40), False, [(18, (0, 0, 40, 32))]),  # area = whole image: no candidate
        (99, (30, 30), False, []),
        (500, (44, 40), False, [(62, (6.0, 6.0, 18.0, 20.0)), (1, (24.0, 10.0, 10.0, 16.0))]),
    ]
    rng = np.random.default_rng(3)
    for image_id, (h, w), gray, objects in specs:
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        pixels = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        pixels[:, : w // 2] = rng.integers(0, 255, 3)
        im = Image.fromarray(pixels)
        (root / "val2017").mkdir(parents=True, exist_ok=True)
        (im.convert("L") if gray else im).save(root / "val2017" / name, quality=95)
        for cat, box in objects:
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": list(box), "iscrowd": 0}
            ann["segmentation"] = _box_polygon(*box)
            if image_id == 500 and cat == 1:  # a crowd RLE (uncompressed counts) for this one
                from pycocotools import mask as mask_utils

                m = np.zeros((h, w), dtype=np.uint8, order="F")
                m[10:26, 24:34] = 1
                rle = mask_utils.encode(m)
                ann["segmentation"] = {"size": [h, w], "counts": _uncompressed(m)}
                ann["iscrowd"] = 1
                assert mask_utils.area(rle) == 160
            anns.append(ann)
    anns.reverse()
    (root / "annotations").mkdir()
    data = {"images": images, "annotations": anns, "categories": COCO_CATEGORIES}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def test_coco_queries_follow_the_reference_recipe(coco_data):
    from pycocotools.coco import COCO

    from p2w.evaluation import coco

    instances = json.loads((coco_data / coco.INSTANCES).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"]}
    queries = coco.prepare(instances, sizes, seed=0)
    assert [q.file for q in queries] == ["000000000042.jpg", "000000000139.jpg", "000000000500.jpg"]  # sorted ids
    assert queries == coco.prepare(instances, sizes, seed=0)  # seeded
    draws = {tuple(q.query_class for q in coco.prepare(instances, sizes, seed=s)) for s in range(12)}
    assert len(draws) > 1  # the draw is random among the candidates, per seed
    by_file = {q.file: q for q in queries}
    q42 = by_file["000000000042.jpg"]
    assert (q42.query_class, q42.others, q42.box) == ("chair", [], (10, 8, 22, 22))
    assert q42.text == "chair and "  # the reference's "a photo of * and chair and " for a one-class image
    q139 = by_file["000000000139.jpg"]
    assert set([q139.query_class, *q139.others]) == {"person", "dog"} and q139.query_class not in q139.others
    # masks: the same as pycocotools' own COCO.annToMask, polygons and RLE alike
    api = COCO()
    api.dataset = instances
    api.createIndex()
    for ann in instances["annotations"]:
        h, w = sizes[ann["image_id"]]
        np.testing.assert_array_equal(coco.ann_mask(ann, h, w), api.annToMask(ann))


def test_coco_region_is_the_masked_object_on_white(coco_data):
    from p2w.evaluation import coco

    instances = json.loads((coco_data / coco.INSTANCES).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"]}
    q = next(q for q in coco.prepare(instances, sizes, seed=0) if q.file == "000000000500.jpg")
    region = np.asarray(coco.region_image(q, coco_data).convert("RGB"), dtype=np.int16)
    x1, y1, x2, y2 = q.box
    assert region.shape[:2] == (y2 - y1, x2 - x1)
    original = np.asarray(Image.open(coco_data / "val2017" / q.file).convert("RGB"), dtype=np.int16)[y1:y2, x1:x2]
    inside = np.abs(region - original).mean()
    assert inside < 25  # the object itself (through one JPEG re-encoding)
    # a box polygon fills its box: a region of the box-shaped object is the object; white only outside the mask
    assert region.min() < 200


def test_coco_eval_end_to_end_and_the_reference_csv_layout(coco_data, tiny, tmp_path):
    import shutil

    from p2w.evaluation import coco

    (coco_data / "val2017" / "000000000500.jpg").unlink()  # a missing image: counted, its query left out
    pred = tmp_path / "pred.json"
    args = ["eval", "coco", "--data", str(coco_data), *tiny_args(tiny), "--mode", "all", "--json"]
    out = runner.invoke(app, [*args, "--save-predictions", str(pred)])
    assert out.exit_code == 0, out.output
    results = json.loads(out.stdout)
    # predictions in the order of the prepared queries, [] for the one whose image is missing
    files = ["000000000042.jpg", "000000000139.jpg", "000000000500.jpg"]
    for rows in json.loads(pred.read_text()).values():
        assert [len(r) > 0 for r in rows["coco"]] == [True, True, False] and rows["coco"][0][0] in files
    assert [r["mode"] for r in results] == list(MODES)
    for r in results:
        assert r["benchmark"] == "coco" and r["missing"] == {"images": 1}
        assert {"R@1", "R@5", "mean_rank", "median_rank", "image_to_ref_R@1"} <= set(r["metrics"])
        assert 1 <= r["metrics"]["mean_rank"] <= 2 and r["metrics"]["R@5"] == 100.0  # two queries, two images
    # independent computation of one mode from the library pieces
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    instances = json.loads((coco_data / coco.INSTANCES).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"]}
    queries = [q for q in coco.prepare(instances, sizes) if q.file != "000000000500.jpg"]
    gallery = engine.encode_images([coco_data / "val2017" / q.file for q in queries])
    prompts = [f"a photo of * and {q.text}" for q in queries]
    import torch

    regions = torch.stack(
        [coco.region_transform(engine)(coco.region_image(q, coco_data).convert("RGB")) for q in queries]
    )
    feats = engine.backbone.encode_image(regions)
    from p2w.core.compose import QueryPlan
    from p2w.evaluation.common import l2n
    from p2w.evaluation.metrics import paired_ranks

    composed = l2n(engine.compose(QueryPlan("pic2word", "x"), feats, prompts).numpy())
    expect = paired_ranks(gallery, composed)
    assert results[0]["metrics"]["R@1"] == pytest.approx(100 * expect["ref_to_image_R@1"])
    assert results[0]["metrics"]["image_to_ref_mean_rank"] == pytest.approx(expect["image_to_ref_mean_rank"])
    # the reference's prepared layout (coco_eval.csv + val2017_masked/) gives the same numbers
    ref = tmp_path / "ref"
    shutil.copytree(coco_data / "val2017", ref / "val2017")
    (ref / "val2017_masked").mkdir()
    lines = ["id,query_regions,query_class,classes"]
    for q in queries:
        (ref / "val2017_masked" / q.file).write_bytes(coco.masked_jpeg(q, coco_data))
        lines.append(f"{q.file},{';'.join(str(float(v)) for v in q.box)} ,{q.query_class},{';'.join(q.others)}")
    (ref / "coco_eval.csv").write_text("\n".join(lines) + "\n")
    again = runner.invoke(app, ["eval", "coco", "--data", str(ref), *tiny_args(tiny), "--mode", "all", "--json"])
    assert again.exit_code == 0, again.output
    assert [r["metrics"] for r in json.loads(again.stdout)] == [r["metrics"] for r in results]
