"""Shared fixtures: an isolated P2W_HOME and Hugging Face cache per run, tiny random open_clip models built
through the real loaders, and the golden Pic2Word test vectors (tests/data/pic2word-parity, a compact copy)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

# Before anything imports huggingface_hub: never touch the user's cache or the network from tests.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="p2w-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

DATA = Path(__file__).resolve().parent / "data"
TV = DATA / "pic2word-parity"  # compact: expand_testvectors() rebuilds the reference's files from it

TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Tiny:
    """Files of a tiny random CLIP and a mapper for it."""

    config: Path
    weights: Path
    mapper: Path
    backbone_id: str


class _CodePayload:
    """Unpickling this writes a marker file: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def write_code_pickle(path: Path, marker: Path, key: str) -> None:
    """A checkpoint-like pickle ``{key: <payload>}`` whose loading, if allowed, would create ``marker``."""
    import pickle

    with path.open("wb") as f:
        pickle.dump({key: {"w": _CodePayload(marker)}}, f)


@pytest.fixture(autouse=True)
def p2w_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "p2w-home"
    monkeypatch.setenv("P2W_HOME", str(home))
    for var in ("P2W_MODEL", "P2W_PRETRAINED", "P2W_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """A tiny CLIP (embed 32, text width 48) saved as config JSON + safetensors, and a seeded mapper file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from p2w.mappers.files import save_mapper
    from p2w.mappers.network import Mapper
    from p2w.spec import BackboneSpec

    root = tmp_path_factory.mktemp("tiny")
    config = root / "tiny_clip.json"
    config.write_text(json.dumps(TINY_CFG))
    model_dir = root / "build"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{model_dir}")
    weights = root / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    backbone_id = BackboneSpec(str(config), str(weights)).id
    torch.manual_seed(1)
    mapper = root / "tiny_mapper.safetensors"
    save_mapper(Mapper(32, 48, hidden_dim=16), mapper, backbone_id)
    return Tiny(config, weights, mapper, backbone_id)


@pytest.fixture(scope="session")
def tiny_engine(tiny: Tiny):  # type: ignore[no-untyped-def]
    """Engine over the tiny CLIP on the CPU, with its mapper."""
    import p2w

    return p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")


def _from_layout(obj, tensors):  # type: ignore[no-untyped-def]
    """Inverse of tools/compact_testvectors.py ``to_layout``: JSON back to the checkpoint's Python objects."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            source, key = obj["__tensor__"]
            return tensors[source][key]
        if "__tuple__" in obj:
            return tuple(_from_layout(v, tensors) for v in obj["__tuple__"])
        if "__ordereddict__" in obj:  # a module's state_dict(), with its `_metadata` attribute
            out = OrderedDict(_from_layout(obj["__ordereddict__"], tensors))
            for name, value in _from_layout(obj["__vars__"], tensors).items():
                setattr(out, name, value)
            return out
        return {k: _from_layout(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_layout(v, tensors) for v in obj]
    return obj


def expand_testvectors(src: Path, dst: Path) -> Path:
    """Rebuild the reference test vectors' files in ``dst`` from the compact copy ``src`` (see its README.md):
    ``clip_state_dict.safetensors`` in float32 (fp16 values widened, unused token-embedding rows zero),
    ``mapper_official.pt`` in the reference's DDP checkpoint layout, every other file copied."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src / "clip_state_dict.compact.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["compact"])
        compact = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    rows = compact.pop("token_embedding.rows").long()
    rows_weight = compact["token_embedding.weight"]
    embedding = torch.zeros(info["vocab_size"], rows_weight.shape[1], dtype=torch.float32)
    embedding[rows] = rows_weight.float()
    clip = {k: v.float() for k, v in compact.items()} | {"token_embedding.weight": embedding}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(clip, str(dst / "clip_state_dict.safetensors"), metadata=info["original_metadata"])
    tensors = {"clip": clip, "mapper": load_file(str(src / "mapper.safetensors"))}
    layout = json.loads((src / "mapper_official.layout.json").read_text())
    torch.save(_from_layout(layout, tensors), dst / "mapper_official.pt")
    compact_only = {
        "clip_state_dict.compact.safetensors",
        "mapper_official.layout.json",
        "README.md",
        "SOURCE_README.txt",
    }
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name not in compact_only:
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst / path.relative_to(src))
    return dst


@pytest.fixture(scope="session")
def tv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden test vectors folder, in the reference's file layout, rebuilt from tests/data/pic2word-parity."""
    return expand_testvectors(TV, tmp_path_factory.mktemp("pic2word-parity"))


@pytest.fixture(scope="session")
def tv_engine(tv: Path):  # type: ignore[no-untyped-def]
    """Engine over the test vectors' CLIP and mapper, fp32 on the CPU."""
    import p2w

    return p2w.load(
        model=str(tv / "open_clip_config.json"),
        pretrained=str(tv / "clip_state_dict.safetensors"),
        mapper=str(tv / "mapper.safetensors"),
        device="cpu",
    )


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Four small RGB images of different sizes and colours, made with PIL."""
    from PIL import Image

    out = []
    for i, (size, colour) in enumerate(
        [((40, 30), "red"), ((32, 32), "blue"), ((20, 50), "green"), ((64, 64), "white")]
    ):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", size, colour).save(path)
        out.append(path)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` where PyTorch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster():  # type: ignore[no-untyped-def]
    """One local Ray cluster for the whole session (2 CPUs; started once: its start takes seconds), this process
    connected to it; ``p2w embed dataset --ray auto`` in this process uses the connection."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
