"""COCO object composition (Saito et al., CVPR 2023, section 4), prepared as the Pic2Word reference does
(``data/coco/prepare_data.py``, ``src/data.py: CsvCOCO``, ``src/eval_utils.py: evaluate_coco``).

For every COCO val2017 image with annotations: the candidate objects are those whose box area ``w * h`` lies in
``(0.05, 0.5 * image area)`` (0.05 square pixels, as the reference writes it); one is drawn at random (p2w seeds the
draw per image, the reference does not). The query is that object: its mask over a white background, cropped to its
box (corners truncated to integers; the masked image passes through a JPEG encoding at PIL's default quality, as
the reference saves it) and resized to the model's square input without cropping. The text names the
other classes of the image: ``a photo of * and {query class} and {others joined by ' and '}`` (the reference's
evaluated prompt); the text baseline is ``a photo of {query class} and {others}``. Each query's target is its own
full image; the metric is the reference's paired ranking in both directions (``metrics.paired_ranks``).

Layouts: ``annotations/instances_val2017.json`` + ``val2017/`` (masks made here, needs ``pycocotools``), or the
reference's prepared ``coco_eval.csv`` + ``val2017/`` + ``val2017_masked/`` (its exact query draw).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2w.engine import Engine
from p2w.errors import ImageError, P2WError
from p2w.evaluation import driver
from p2w.evaluation import metrics as m
from p2w.evaluation.common import EvalResult, Progress, check_missing, image_vectors, read_json
from p2w.evaluation.driver import QuerySet, Rules, query_set, run

INSTANCES = Path("annotations") / "instances_val2017.json"
CSV = "coco_eval.csv"
TEMPLATES = {
    "pic2word": "a photo of * and {text}",
    "pic2word-slerp": "a photo of * and {text}",
    "image": "",
    "text": "a photo of {text}",
    "average": "a photo of {text}",
    "slerp": "a photo of {text}",  # the fusions read the text as average does
    "weighted": "a photo of {text}",
}
TOP = 50


@dataclass(frozen=True)
class Query:
    """One composition query: the image file, the object's box ``(x1, y1, x2, y2)``, its class and the others."""

    file: str
    box: tuple[int, int, int, int]
    query_class: str
    others: list[str]
    ann: dict[str, Any] | None = None  # the COCO annotation (None with the reference's CSV: masks are on disk)

    @property
    def text(self) -> str:
        """``{query class} and {others}``, as the reference joins them (an image with one class ends in "and ")."""
        return f"{self.query_class} and {' and '.join(self.others or [''])}"


def prepare(instances: dict[str, Any], sizes: dict[int, tuple[int, int]], seed: int = 0) -> list[Query]:
    """The reference's query draw from COCO instances, seeded per image; ``sizes`` maps image id -> (h, w)."""
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    files = {int(im["id"]): str(im["file_name"]) for im in instances.get("images", [])}
    queries = []
    for image_id in sorted(by_image):
        anns = by_image[image_id]
        if image_id not in sizes or image_id not in files:
            continue
        h, w = sizes[image_id]
        labels = list(dict.fromkeys(names[a["category_id"]] for a in anns))
        cands = [a for a in anns if 0.05 < float(a["bbox"][2]) * float(a["bbox"][3]) < 0.5 * h * w]
        if not cands:
            continue
        pick = cands[int(np.random.default_rng([seed, image_id]).integers(len(cands)))]
        x, y, bw, bh = (float(v) for v in pick["bbox"])
        query_class = names[pick["category_id"]]
        others = [lab for lab in labels if lab != query_class]
        box = (int(x), int(y), int(x + bw), int(y + bh))
        queries.append(Query(files[image_id], box, query_class, others, pick))
    return queries


def read_reference_csv(path: Path) -> list[Query]:
    """The reference's ``coco_eval.csv``: ``id,query_regions,query_class,classes`` (regions ``x1;y1;x2;y2``)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [
            Query(
                r["id"],
                tuple(int(float(v)) for v in r["query_regions"].strip().split(";")),  # type: ignore[arg-type]
                r["query_class"],
                r["classes"].split(";") if r["classes"] else [],
            )
            for r in rows
        ]
    except (OSError, KeyError, ValueError, AttributeError) as exc:
        raise P2WError(f"cannot read {path} (the reference's id,query_regions,query_class,classes): {exc}") from exc


def ann_mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    """The object's mask ``(h, w)`` uint8, as pycocotools' ``COCO.annToMask``."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise P2WError(
            "p2w eval coco makes its query masks with pycocotools: pip install 'p2w[coco]' "
            f"(or use the reference's prepared {CSV} and val2017_masked/)"
        ) from exc
    segm = ann["segmentation"]
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    return np.asarray(mask_utils.decode(rle), dtype=np.uint8)


def masked_jpeg(query: Query, data: Path) -> bytes:
    """The image with everything outside the object's mask white, as JPEG bytes at PIL's default quality: the
    reference's ``val2017_masked/`` file."""
    from PIL import Image

    assert query.ann is not None, "masks come from the annotation"
    with Image.open(data / "val2017" / query.file) as im:
        pixels = np.array(im)
    h, w = pixels.shape[:2]
    mask = ann_mask(query.ann, h, w)
    if pixels.ndim == 3:
        mask = mask[..., None]
    masked = (pixels * mask + (1 - mask) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(masked).save(buffer, format="JPEG")
    return buffer.getvalue()


def region_image(query: Query, data: Path) -> Any:
    """The query object: masked (white elsewhere) and cropped to its box, as a PIL image."""
    from PIL import Image

    source: Path | io.BytesIO = data / "val2017_masked" / query.file
    if query.ann is not None:
        source = io.BytesIO(masked_jpeg(query, data))
    try:
        with Image.open(source) as im:
            return im.crop(query.box)
    except OSError as exc:
        raise ImageError(f"cannot read the masked image of {query.file}: {exc}") from exc


def region_transform(engine: Engine) -> Any:
    """The model's preprocessing with its resize + centre crop replaced by a square resize (no crop)."""
    from torchvision import transforms as T

    steps = list(engine.backbone.preprocess.transforms)
    crop = next((i for i, t in enumerate(steps) if isinstance(t, T.CenterCrop)), None)
    if crop is None:
        raise P2WError("the model's preprocessing has no centre crop to replace for COCO query regions")
    size = steps[crop].size
    resize = T.Resize(tuple(size), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([resize, *steps[crop + 1 :]])


def check_layout(data: Path) -> None:
    """Fail before any model is loaded when ``data`` holds neither layout."""
    if not (data / CSV).is_file() and not (data / INSTANCES).is_file():
        raise P2WError(f"{data} has neither {INSTANCES} (+ val2017/) nor the reference's {CSV} (+ val2017_masked/)")


def _queries(data: Path, seed: int) -> list[Query]:
    check_layout(data)
    if (data / CSV).is_file():
        return read_reference_csv(data / CSV)
    instances = read_json(data / INSTANCES)
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in instances.get("images", [])}
    return prepare(instances, sizes, seed)


def evaluate(
    engine: Engine,
    data: Path,
    home: Path,
    mode: str = "pic2word",
    alpha: float | None = None,
    alpha_sweep: bool = False,
    split: str = "val",
    strict: bool = False,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    seed: int = 0,
) -> list[EvalResult]:
    """One ``EvalResult`` per mode; ``metrics`` has ``R@k`` (query -> its image, percent), the mean and median
    rank, and the reverse direction (``image_to_ref_*``) as the reference prints it."""
    if split != "val":
        raise P2WError("coco is evaluated on val2017 only (--split val)")
    queries = _queries(data, seed)
    paths = {q.file: data / "val2017" / q.file for q in queries}
    images = image_vectors(engine, paths, home, workers, batch_size, progress)
    described = [driver.Query(None, (q.text,), needs=(q.file,)) for q in queries]  # the query's own image is its target
    qs = query_set("coco", TEMPLATES, images, [q.file for q in queries], described, engine.backbone.embed_dim)
    missing = {"images": len(queries) - len(qs.rows)}
    check_missing(f"COCO under {data}", missing, strict)
    if not qs.rows:
        raise P2WError(f"no COCO query could be built from {data}: none of its val2017 images was found")
    region = _region_features(engine, [queries[i] for i in qs.rows], data, batch_size)
    return run(engine, RULES, split, mode, [replace(qs, refs=region, missing=missing)], alpha=alpha, sweep=alpha_sweep)


def _score(scores: np.ndarray, tops: list[list[str]], qs: QuerySet) -> dict[str, float]:
    """The reference's paired ranks from ``scores.T`` (images x queries, its orientation): R@k in percent, the mean
    and median rank, query -> image unprefixed and ``image_to_ref_*``."""
    ranks = m.paired_ranks_in(scores.T)
    metrics = {k.removeprefix("ref_to_image_"): _pct(k, v) for k, v in ranks.items() if k.startswith("ref_")}
    metrics.update({k: _pct(k, v) for k, v in ranks.items() if k.startswith("image_to_ref_")})
    return metrics


def _paired(queries: np.ndarray, gallery: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """The scores ``(Q, G)`` as the transpose of the reference's ``images @ queries.T``, so every rank reads one."""
    return m.score_matrix(gallery, queries).T


RULES = Rules("coco", _score, top=partial(m.top_of, top=TOP), product=_paired)


def _pct(key: str, value: float) -> float:
    return 100 * value if "R@" in key else value


def _region_features(engine: Engine, queries: list[Query], data: Path, batch_size: int) -> np.ndarray:
    transform = region_transform(engine)
    out = []
    for i in range(0, len(queries), batch_size):
        pixels = torch.stack([transform(region_image(q, data).convert("RGB")) for q in queries[i : i + batch_size]])
        with torch.inference_mode():
            out.append(engine.backbone.encode_image(pixels).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
