"""Filling a FAISS index on a Ray cluster (``p2w index --embeddings DIR --ray ADDRESS``), as autofaiss's distributed
mode does: the driver trains the index once (``p2w.datasets.faiss_index.build_index``), every vector file is added to
a copy of the trained, empty index by a Ray task (rotation, coarse assignment and encoding: the expensive part, where
the machines are), each row under its global id, and the driver merges the shards' inverted lists into one index, in
file order. The merged index finds what the one filled in this process finds (the same codes in the same lists).

Only an IVF index has lists to merge; an exact (``Flat``) one, small by p2w's choice, is filled in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from p2w.datasets.cluster import RAY_HINT, connect
from p2w.errors import P2WError
from p2w.progress import Progress

CHUNK = 65_536  # rows read, converted to float32 and added at a time


def fill_on_ray(faiss: Any, trained: Any, files: list[Path], starts: np.ndarray, address: str,
                progress: Progress | None = None) -> Any:  # fmt: skip
    """``trained`` (an empty IVF index) filled with the rows of ``files`` (each starting at global row ``starts[i]``)
    by Ray tasks on the cluster at ``address``; returns the merged index."""
    try:
        import ray
    except ImportError as exc:
        raise P2WError(RAY_HINT) from exc
    ivf = faiss.extract_index_ivf(trained)
    ours = connect(ray, address)
    try:
        empty = ray.put(faiss.serialize_index(trained))
        add = ray.remote(num_cpus=1)(_add_file)
        pending = [add.remote(empty, str(f), int(s)) for f, s in zip(files, starts, strict=False)]
        for done, ref in enumerate(pending, 1):  # in file order: the same lists as one process fills
            shard = faiss.deserialize_index(ray.get(ref))
            ivf.merge_from(faiss.extract_index_ivf(shard), 0)
            trained.ntotal = ivf.ntotal  # a pre-transform around the IVF counts too
            if progress:
                progress("merging", done, len(pending))
    finally:
        if ours:
            ray.shutdown()
    return trained


def _add_file(empty: np.ndarray, path: str, start: int) -> np.ndarray:
    """A Ray task: one vector file's rows added, under their global ids, to a copy of the trained empty index."""
    import faiss

    index = faiss.deserialize_index(empty)
    rows = np.load(path, mmap_mode="r")
    for lo in range(0, len(rows), CHUNK):
        block = np.ascontiguousarray(rows[lo : lo + CHUNK], dtype=np.float32)
        index.add_with_ids(block, np.arange(start + lo, start + lo + len(block), dtype=np.int64))
    return faiss.serialize_index(index)
