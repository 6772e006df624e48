"""Write the compact, lossless copy of the Pic2Word parity test vectors that the tests carry (tests/data):

    python tools/compact_testvectors.py [--src ../shared/testvectors/pic2word-parity] [--out tests/data/pic2word-parity]

The original set (~56 MB) is dominated by two copies of a tiny CLIP's float32 weights: `clip_state_dict.safetensors`
and the CLIP half of `mapper_official.pt`. The compact copy stores

* the CLIP weights once, as float16 (every tensor of the set except `logit_scale` is fp16-exact, which is checked
  here; `logit_scale` stays float32), with only the token-embedding rows that some token id of the set uses
  (`token_embedding.rows` holds their ids);
* `mapper_official.layout.json`: the reference checkpoint with every tensor replaced by a reference to the CLIP or
  mapper tensor it equals (checked here), key order and non-tensor values (epoch, name, optimizer state) kept;
* every other file unchanged.

`tests/conftest.py` (`expand_testvectors`) rebuilds the original file names from it for each test session. This
script runs that very function on what it wrote and checks the result against the originals: every tensor bit for
bit (the unused token-embedding rows come back as zeros), every other file byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "testvectors" / "pic2word-parity"
DEFAULT_OUT = ROOT / "tests" / "data" / "pic2word-parity"

CLIP = "clip_state_dict.safetensors"
OFFICIAL = "mapper_official.pt"
COMPACT_CLIP = "clip_state_dict.compact.safetensors"
LAYOUT = "mapper_official.layout.json"
EMBEDDING = "token_embedding.weight"
ROWS = "token_embedding.rows"
AS_IS = [
    "config.json",
    "open_clip_config.json",
    "prompts.json",
    "expected.npz",
    "images.npy",
    "metrics.json",
    "metrics_inputs.npz",
    "mapper.safetensors",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strings(obj: Any) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def ints(obj: Any) -> list[int]:
    """Every int inside a JSON value (token id lists among them)."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int):
        return [obj]
    if isinstance(obj, dict):
        return [i for v in obj.values() for i in ints(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in ints(v)]
    return []


def used_rows(src: Path, vocab: int) -> list[int]:
    """Token ids the set can feed the text tower: every `*token_ids` array of expected.npz, every int of
    prompts.json below the vocabulary size (its token id lists; also image indices and positions, harmless extra
    rows), and the tokens of every string of prompts.json (captions, prompts, baseline texts, as any test may
    tokenize them)."""
    import numpy as np
    import open_clip

    ids: set[int] = set()
    with np.load(src / "expected.npz") as exp:
        for key in exp.files:
            if key.endswith("token_ids"):
                ids.update(int(i) for i in np.unique(exp[key]))
    prompts = json.loads((src / "prompts.json").read_text())
    ids.update(i for i in ints(prompts) if 0 <= i < vocab)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    texts = strings(prompts)
    ids.update(int(i) for i in np.unique(tokenizer(texts).numpy()))
    return sorted(ids)


def to_layout(obj: Any, clip: dict, mapper: dict, key: str = "") -> Any:
    """The checkpoint as JSON: tensors as {"__tensor__": ["clip"|"mapper", key]}, tuples as {"__tuple__": [...]},
    OrderedDicts as {"__ordereddict__": {...}, "__vars__": {their attributes}}.
    A tensor refers to the tensor of its own name (``module.`` removed) when that one is equal, else to any equal
    one."""
    import torch

    if isinstance(obj, torch.Tensor):
        name = key.removeprefix("module.")
        candidates = [(n, k, t[k]) for n, t in (("clip", clip), ("mapper", mapper)) for k in t if k == name]
        candidates += [(n, k, v) for n, t in (("clip", clip), ("mapper", mapper)) for k, v in t.items()]
        for source, k, value in candidates:
            if value.dtype == obj.dtype and value.shape == obj.shape and torch.equal(value, obj):
                return {"__tensor__": [source, k]}
        raise SystemExit(f"{OFFICIAL}: tensor {key} equals no tensor of {CLIP} or mapper.safetensors")
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise SystemExit(f"{OFFICIAL}: a dict with non-string keys cannot be stored as JSON: {list(obj)[:5]}")
        items = {k: to_layout(v, clip, mapper, k) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        if type(obj) is OrderedDict:  # a module's state_dict(), with its `_metadata` attribute
            return {"__ordereddict__": items, "__vars__": to_layout(vars(obj), clip, mapper)}
        raise SystemExit(f"{OFFICIAL}: cannot store a {type(obj).__name__} as JSON")
    if isinstance(obj, tuple):
        return {"__tuple__": [to_layout(v, clip, mapper) for v in obj]}
    if isinstance(obj, list):
        return [to_layout(v, clip, mapper) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise SystemExit(f"{OFFICIAL}: cannot store a {type(obj).__name__} as JSON")


def same(a: Any, b: Any, where: str, zeroed: list[int] | None = None) -> None:
    """Strict equality (types, key order, tensor dtype/shape/bits); the token embedding may differ in `zeroed`
    rows only, which must be zero in `b`."""
    import torch

    if type(a) is not type(b):
        raise SystemExit(f"{where}: {type(a).__name__} != {type(b).__name__}")
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            raise SystemExit(f"{where}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}")
        if where.endswith(EMBEDDING) and zeroed is not None:
            keep = torch.ones(a.shape[0], dtype=torch.bool)
            keep[zeroed] = False
            if not (torch.equal(a[keep], b[keep]) and not b[~keep].any()):
                raise SystemExit(f"{where}: used rows differ or unused rows are not zero")
        elif not torch.equal(a, b):
            raise SystemExit(f"{where}: tensors differ")
    elif isinstance(a, dict):
        if list(a) != list(b):
            raise SystemExit(f"{where}: keys {list(a)[:5]}... != {list(b)[:5]}...")
        for k in a:
            same(a[k], b[k], f"{where}.{k}", zeroed)
        if type(a) is not dict:  # an OrderedDict state_dict() carries `_metadata`
            same(dict(vars(a)), dict(vars(b)), f"{where} attributes")
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise SystemExit(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]", zeroed)
    elif a != b:
        raise SystemExit(f"{where}: {a!r} != {b!r}")


def load_expand():  # type: ignore[no-untyped-def]
    """`expand_testvectors` from tests/conftest.py: the check runs the code the tests run."""
    spec = importlib.util.spec_from_file_location("p2w_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.expand_testvectors


def compact(src: Path, out: Path) -> dict[str, Any]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src / CLIP), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    clip = load_file(str(src / CLIP))
    mapper = load_file(str(src / "mapper.safetensors"))
    for key, value in clip.items():
        if value.dtype != torch.float32:
            raise SystemExit(f"{CLIP}: {key} is {value.dtype}, expected float32")
        if key != "logit_scale" and not torch.equal(value.half().float(), value):
            raise SystemExit(f"{CLIP}: {key} is not fp16-exact; storing it as fp16 would lose bits")
    vocab, _ = clip[EMBEDDING].shape
    rows = used_rows(src, vocab)

    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    tensors = {k: v if k == "logit_scale" else v.half() for k, v in clip.items()}
    tensors[EMBEDDING] = clip[EMBEDDING][rows].half().contiguous()
    tensors[ROWS] = torch.tensor(rows, dtype=torch.int32)
    save_file(
        tensors,
        str(out / COMPACT_CLIP),
        # one key: safetensors writes its metadata map in arbitrary order, and the file should be reproducible
        metadata={"compact": json.dumps({"original_metadata": metadata, "vocab_size": vocab}, sort_keys=True)},
    )
    official = torch.load(src / OFFICIAL, map_location="cpu", weights_only=True)
    layout = to_layout(official, clip, mapper)
    (out / LAYOUT).write_text(json.dumps(layout, indent=1) + "\n")
    for name in AS_IS:
        shutil.copyfile(src / name, out / name)
    images = sorted(p.name for p in (src / "images").glob("*.png"))
    for name in images:
        shutil.copyfile(src / "images" / name, out / "images" / name)
    shutil.copyfile(src / "README.md", out / "SOURCE_README.txt")  # .txt: ruff would reformat a .md's code blocks
    return {"rows": rows, "vocab": vocab, "images": images, "metadata": metadata}


def verify(src: Path, out: Path, rows: list[int]) -> list[str]:
    """Expand `out` with the tests' own function and compare with `src`; return the files compared."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    expand = load_expand()
    zeroed = sorted(set(range(load_file(str(src / CLIP))[EMBEDDING].shape[0])) - set(rows))
    with tempfile.TemporaryDirectory() as tmp:
        got = expand(out, Path(tmp))
        names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and p.name != "README.md")
        have = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
        if names != have:
            raise SystemExit(f"expanded files {have} != original files {names}")
        for name in names:
            a, b = src / name, got / name
            if name == CLIP:
                same(load_file(str(a)), load_file(str(b)), name, zeroed)
                with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
                    # safetensors keeps metadata in a hash map: its order is arbitrary
                    same(sorted(fa.metadata().items()), sorted(fb.metadata().items()), f"{name} metadata")
            elif name == OFFICIAL:
                load = {"map_location": "cpu", "weights_only": True}
                same(torch.load(a, **load), torch.load(b, **load), name, zeroed)
            elif a.read_bytes() != b.read_bytes():
                raise SystemExit(f"{name}: bytes differ")
    return names


def readme(src: Path, out: Path, info: dict[str, Any]) -> str:
    originals = sorted(p for p in src.rglob("*") if p.is_file())
    compacts = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "README.md")

    def table(files: list[Path], base: Path) -> str:
        lines = ["| file | bytes | sha256 |", "|---|---:|---|"]
        lines += [f"| `{p.relative_to(base)}` | {p.stat().st_size} | `{sha256(p)}` |" for p in files]
        return "\n".join(lines)

    total_src = sum(p.stat().st_size for p in originals)
    total_out = sum(p.stat().st_size for p in compacts)
    n_rows, vocab = len(info["rows"]), info["vocab"]
    return f"""# Pic2Word parity test vectors (compact, lossless copy)

Written by `tools/compact_testvectors.py` from the team's `../shared/testvectors/pic2word-parity/` (set `public`):
golden outputs of the official Pic2Word reference code (`google-research/composed_image_retrieval` at commit
`8c053297c2fae9cd17ddcded48445a4f47208dbd`) for a tiny randomly initialised CLIP and mapper. What every file holds,
how it was made and the tolerances observed are in `SOURCE_README.txt` (that set's README, unchanged).

The tests never read these files directly: the session fixture `tv` (`tests/conftest.py`, `expand_testvectors`)
rebuilds the original file names in a temporary folder, and the tests use that folder.

## What was transformed, and why it is lossless

* `clip_state_dict.safetensors` (float32) is stored as `clip_state_dict.compact.safetensors`: every tensor as
  float16 except `logit_scale` (float32), and `token_embedding.weight` holds only the {n_rows} rows (of {vocab})
  whose ids are listed in `token_embedding.rows` (int32). The fixture writes it back as float32 safetensors with
  the original metadata; the other {vocab - n_rows} token-embedding rows are zeros.
* `mapper_official.pt` (the reference's DDP checkpoint) is stored as `mapper_official.layout.json`: the checkpoint
  as JSON, each tensor replaced by the name of the CLIP or mapper tensor it equals
  (`{{"__tensor__": ["clip", key]}}`), tuples as `{{"__tuple__": [...]}}`, OrderedDicts (with their `_metadata`)
  as `{{"__ordereddict__": ...}}`. The fixture `torch.save`s the same objects: keys `epoch`, `name`, `state_dict`
  (`module.` + CLIP key, in the original order), `state_dict_img2text` (`module.` + mapper key), `optimizer` (the
  AdamW `state_dict()`: two param groups, empty state), so `p2w` imports a file in the reference's layout.
* Every other file is unchanged (same bytes) and copied by the fixture.

Why nothing is lost:

* The source README states, and the script checks, that every CLIP tensor except `logit_scale` was rounded to
  float16 before being stored as float32: float16 → float32 is exact, so those tensors come back bit for bit.
* A token-embedding row only enters a computation when its token id is in the input. The kept rows are every id of
  the `*token_ids` arrays of `expected.npz`, every int of `prompts.json` below {vocab}, and the tokens of every
  string of `prompts.json` (captions, prompts, baseline texts). Every golden output comes from those inputs, so no
  output changes; a text made of other tokens would embed differently (there is no golden value for one).
* The script checked `mapper_official.pt` tensor by tensor: its `state_dict` equals `module.` + the CLIP state dict
  and its `state_dict_img2text` equals `mapper.safetensors`, bit for bit.
* After writing, the script ran `expand_testvectors` and compared the result with the originals: all files present,
  every tensor equal in dtype, shape and bits (unused embedding rows zero), key order and every non-tensor value of
  the checkpoint equal, every other file byte for byte.

Size: {total_src} bytes in the original set, {total_out} bytes here (without this README).

## Files here

{table(compacts, out)}

## Original files (provenance)

{table(originals, src)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.src / "expected.npz").is_file():
        sys.exit(f"no test vectors at {args.src}")
    info = compact(args.src, args.out)
    names = verify(args.src, args.out, info["rows"])
    (args.out / "README.md").write_text(readme(args.src, args.out, info))
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total} bytes); {len(info['rows'])} token rows kept; {len(names)} files verified")


if __name__ == "__main__":
    main()
