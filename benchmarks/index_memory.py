"""Peak memory (RSS) of `p2w index` against the number of images: it should not grow with the folder.

    python benchmarks/make_photos.py /tmp/photos10k 10000
    python benchmarks/index_memory.py /tmp/photos10k --counts 1000 10000

Each count is indexed in a fresh process and P2W_HOME with a small ViT (224-pixel input, so decoding and
preprocessing are real-sized; the model is small so the run takes seconds, not hours). Reported: the peak RSS of the
main process and the largest of its DataLoader worker processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL_VIT = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

CHILD = r"""
import json, resource, sys
from pathlib import Path
from p2w.library.index import index
from p2w.settings import Settings
from p2w.spec import BackboneSpec
import p2w
folder, config, home = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
settings = Settings(home=home, model=config, pretrained="none", device="cpu")
spec = BackboneSpec(config, "none")
report = index([folder], spec, lambda: p2w.load(model=config, pretrained="none", device="cpu"), settings,
               batch_size=64, workers=2)
print(json.dumps({"images": report.added, "seconds": report.seconds,
                  "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    files = sorted(args.folder.rglob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="p2w-memory-"))
    config = work / "small_vit.json"
    config.write_text(json.dumps(SMALL_VIT))
    rows = []
    for count in args.counts:
        subset = work / f"photos{count}"
        subset.mkdir()
        for f in files[:count]:
            (subset / f.name).symlink_to(f)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(subset), str(config), str(work / f"home{count}")],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
