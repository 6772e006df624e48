"""What a search hit of a layout carries (``image_path``, ``caption``, ``url``, ``norm``, ``hash``), read by row.

A layout's metadata is parquet, which reads by row group: fine for a scan, slow for ten random rows of a
ten-million-row layout. So ``p2w index --embeddings`` also writes those columns as one Arrow IPC file
(``DIR/index_metadata.arrow``, uncompressed, as clip-retrieval's ``parquet_to_arrow`` does for its back end), which a
search maps into memory and reads row by row (``ArrowRows``); an index built by another tool has none, and its hits
are read from the parquet row groups (``ParquetRows``, the last few kept).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from p2w.atomic import atomic_path
from p2w.core import layout
from p2w.errors import P2WError
from p2w.fspath import shown

COLUMNS = ("image_path", "image_path_bytes", "caption", "url", "norm", "hash")  # what a hit may carry, where the
# metadata has it (image_path_bytes: a name that is not UTF-8, ``p2w.core.layout.image_path_of``)
ARROW = "index_metadata.arrow"


class RowReader(Protocol):
    def row(self, item: int) -> dict[str, Any]:
        """The metadata of global row ``item``: the columns of ``COLUMNS`` the layout has."""
        ...


def _files(vector_files: list[Path]) -> list[Path]:
    files = [layout.metadata_file(f) for f in vector_files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise P2WError(f"{shown(str(missing[0]))} is missing: a layout's every img_emb file needs its metadata")
    return files


def write_arrow(folder: Path, vector_files: list[Path]) -> dict[str, int]:
    """Write ``folder/index_metadata.arrow`` from the layout's parquet, a part at a time; its size and mtime."""
    import pyarrow as pa

    pq = layout.pyarrow_parquet()
    files = _files(vector_files)
    present = {c for f in files for c in pq.read_schema(f).names}
    types = {"norm": pa.float32(), "image_path_bytes": pa.binary()}
    fields = [pa.field(c, types.get(c, pa.string())) for c in COLUMNS if c in present]
    schema = pa.schema(fields)
    with atomic_path(folder / ARROW) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for f in files:
                names = pq.read_schema(f).names
                table = pq.read_table(f, columns=[c.name for c in fields if c.name in names])
                columns = [table.column(c.name).cast(c.type) if c.name in names else
                           pa.nulls(table.num_rows, c.type) for c in fields]  # fmt: skip
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        st = tmp.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ArrowRows:
    """``index_metadata.arrow`` mapped into memory: a row is read where it lies (the page cache's pages)."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()

    def row(self, item: int) -> dict[str, Any]:
        return {c: self.table.column(c)[item].as_py() for c in self.table.column_names}


class ParquetRows:
    """A layout's parquet metadata read a row group at a time (the last 8 kept), for an index built elsewhere."""

    def __init__(self, vector_files: list[Path], starts: np.ndarray) -> None:
        pq = layout.pyarrow_parquet()
        self.parquet = [pq.ParquetFile(f) for f in _files(vector_files)]
        self.starts = starts
        self.groups = [np.cumsum([0] + [p.metadata.row_group(g).num_rows for g in range(p.num_row_groups)])
                       for p in self.parquet]  # fmt: skip
        self.columns = [[c for c in COLUMNS if c in p.schema_arrow.names] for p in self.parquet]
        self._group = functools.lru_cache(maxsize=8)(self._read_group)

    def row(self, item: int) -> dict[str, Any]:
        f = int(np.searchsorted(self.starts, item, side="right") - 1)
        at = item - int(self.starts[f])
        g = int(np.searchsorted(self.groups[f], at, side="right") - 1)
        table = self._group(f, g)
        return {c: table.column(c)[at - int(self.groups[f][g])].as_py() for c in table.column_names}

    def _read_group(self, f: int, g: int) -> Any:
        return self.parquet[f].read_row_group(g, columns=self.columns[f])


def open_rows(folder: Path, vector_files: list[Path], starts: np.ndarray, facts: dict[str, int] | None) -> RowReader:
    """The Arrow file when it is the one the build wrote (``facts``: its size and mtime), else the parquet."""
    path = folder / ARROW
    if facts is not None:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_size, st.st_mtime_ns) == (facts["size"], facts["mtime_ns"]):
            return ArrowRows(path)
    return ParquetRows(vector_files, starts)
