"""``IndexGallery``: a FAISS index over a layout as a ``p2w.core.gallery.Gallery``, memory-mapped.

The index file is mapped, not read (``IO_FLAG_MMAP_IFC``: its codes and lists stay in the page cache, so the
process's own memory follows the index's small parts, not the rows); a query's top ``RERANK`` candidates are
re-ranked with their exact vectors, read from the memory-mapped npy rows; a result's metadata (``image_path``,
``caption``, ``url``, ``norm``) is read by row (``p2w.datasets.hit_metadata``). Works on p2w's layouts and on
clip-retrieval's (no ``norm``, no manifest: refining from a result then has no features to give, see ``features``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from p2w.core import layout
from p2w.core.dates import Where
from p2w.core.gallery import Hit, LocalFile, unfiltered
from p2w.datasets.faiss_index import INDEX, RERANK, IndexInfo, Rows, faiss_module, rerank, vector_facts
from p2w.datasets.hit_metadata import ParquetRows, open_rows
from p2w.errors import P2WError
from p2w.fspath import shown


def rebuild_hint(folder: Path) -> str:
    return f"build it again with: p2w index --embeddings {shown(str(folder))}"


class IndexGallery:
    """The FAISS index ``folder/image.index`` over the layout in ``folder``, e.g. ``IndexGallery(Path("emb"))``.

    Refused with a one-line error: no index (build it), an index that is not the one ``index.json`` records, a layout
    whose vector files changed since the build, an index and a layout of different sizes, a truncated npy file, a
    metadata file missing."""

    def __init__(self, folder: Path) -> None:
        faiss = faiss_module()
        self.folder = folder
        path = folder / INDEX
        if not path.exists():
            raise P2WError(f"no {INDEX} in {shown(str(folder))}; {rebuild_hint(folder)}")
        info = IndexInfo.read(folder)
        built = info.current(folder) if info is not None else None
        if info is not None and built is None:
            raise P2WError(
                f"{shown(str(path))} is not the index {folder / 'index.json'} records; {rebuild_hint(folder)}"
            )
        if built is not None and built.vectors != vector_facts(folder):
            raise P2WError(
                f"the layout in {shown(str(folder))} changed since its index was built; {rebuild_hint(folder)}"
            )
        self.manifest = layout.Manifest.read(folder)
        self.rows = Rows.of(folder)
        self.index = _read(faiss, path)
        if self.index.ntotal != self.rows.count:
            raise P2WError(f"{shown(str(path))} holds {self.index.ntotal:,} vectors, the layout {self.rows.count:,}; "
                           f"{rebuild_hint(folder)}")  # fmt: skip
        self.space, self.lists = faiss.ParameterSpace(), _lists(faiss, self.index)
        self.params = built.params if built is not None and built.params else ""
        if self.params:
            self.space.set_index_parameters(self.index, self.params)
        elif self.lists:  # another tool's index: the breadth its file holds
            self.params = f"nprobe={faiss.extract_index_ivf(self.index).nprobe}"
        files = layout.vector_files(folder)
        self.metadata = open_rows(folder, files, self.rows.starts, built.metadata if built is not None else None)
        self.backbone = self.manifest.backbone if self.manifest is not None else (info.backbone if info else None)

    @property
    def name(self) -> str:
        return f"the index in {shown(str(self.folder))}"

    @property
    def dim(self) -> int:
        return self.rows.dim

    def count(self) -> int | None:
        return self.rows.count

    def search(self, query: np.ndarray, k: int, where: Where | None = None, ef: int | None = None) -> list[Hit]:
        """The ``k`` rows closest to ``query``: the index's candidates, re-ranked by their exact vectors; ``ef``: the
        inverted lists to probe for this query instead of the build's choice (an IVF index)."""
        unfiltered(where, self.name)
        if query.shape != (self.dim,):
            raise P2WError(f"the query has {query.shape[-1]} dimensions but {self.name} holds {self.dim}-d vectors")
        wanted = min(max(RERANK, 10 * k), self.rows.count)
        vector = np.ascontiguousarray(query[None], dtype=np.float32)
        if ef is not None and self.lists:  # --ef: this query's breadth, in lists probed
            self.space.set_index_parameters(self.index, f"nprobe={min(ef, self.lists)}")
        try:
            _, found = self.index.search(vector, wanted)
        finally:
            if ef is not None and self.lists:
                self.space.set_index_parameters(self.index, self.params)
        ids, scores = rerank(self.rows, query, found[0], k)
        hits = []
        for rank, (item, score) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True), 1):
            meta = self.metadata.row(item)
            path = layout.image_path_of(meta)
            hits.append(Hit(rank, float(score), path, id=item, caption=meta.get("caption"), url=meta.get("url")))
        return hits

    def features(self, item: int) -> np.ndarray | None:
        """Row ``item``'s unit vector times its ``norm``; None when the layout has no ``norm`` (made by another
        tool): a query that refines from such a result needs the image itself (``local_file``)."""
        self._check(item)
        norm = self.metadata.row(item).get("norm")
        if norm is None:
            return None
        return self.rows.get(np.array([item]))[0] * np.float32(norm)

    def local_file(self, item: int) -> LocalFile | None:
        """Row ``item``'s ``image_path`` when it is a regular local file now, else None (a key, a URL, gone)."""
        self._check(item)
        row = self.metadata.row(item)
        path = layout.image_path_of(row)
        if not path or not os.path.isabs(path):
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return LocalFile(path, hash=row.get("hash"))

    def _check(self, item: int) -> None:
        if not 0 <= item < self.rows.count:
            raise P2WError(f"no row {item} in {self.name}")

    def close(self) -> None:
        self.metadata = ParquetRows([], np.zeros(1, dtype=np.int64))  # the maps and row groups go


def _lists(faiss: Any, index: Any) -> int:
    """The inverted lists of an IVF index; 0 for another kind (exact: no breadth to set)."""
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 0


def _read(faiss: Any, path: Path) -> Any:
    """The index memory-mapped: a file (``IO_FLAG_MMAP_IFC`` maps flat codes and inverted lists alike), or the
    folder clip-retrieval's index combiner writes (``populated.index`` + its ``.ivfdata``)."""
    try:
        if path.is_dir():
            return faiss.read_index(str(path / "populated.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        mapped = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)  # older FAISS: lists only, flat codes read
        return faiss.read_index(str(path), mapped | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise P2WError(f"cannot read {shown(str(path))} ({str(exc).splitlines()[-1][:200]}); "
                       f"{rebuild_hint(path.parent)}") from exc  # fmt: skip
