"""A resumable Parquet table of embedded faces, written by ``visage embed``.

One row per face (or one row with ``face_index = -1`` for an image with no face or an error),
so a re-run knows which sources are done. Progress is checkpointed to part files beside the
output; the final table is written to a temporary file and renamed, so it is never half-written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .pipeline import ImageResult

CHECKPOINT_EVERY = 64  # images per part file

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("face_index", pa.int32()),
        ("left", pa.int32()),
        ("top", pa.int32()),
        ("right", pa.int32()),
        ("bottom", pa.int32()),
        ("score", pa.float32()),
        ("quality", pa.float32()),
        ("embedding", pa.list_(pa.float32(), 128)),
        ("model_id", pa.string()),
        ("error", pa.string()),
    ]
)


def _rows(result: ImageResult) -> list[dict[str, object]]:
    base: dict[str, object] = {"source": result.source, "sha256": result.sha256, "error": result.error}
    if not result.faces:
        return [{**base, "face_index": -1}]
    return [
        {
            **base,
            "face_index": i,
            "left": f.box[0],
            "top": f.box[1],
            "right": f.box[2],
            "bottom": f.box[3],
            "score": f.score,
            "quality": f.quality.score,
            "embedding": None if f.embedding is None else f.embedding.tolist(),
            "model_id": f.model_id,
        }
        for i, f in enumerate(result.faces)
    ]


class FaceTable:
    """The output table at ``path`` with its checkpoint directory ``path.parts/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        table = self._read_all()
        # Sources that failed are retried on the next run: the failure may have been transient.
        self.done = {
            str(src) for src, err in zip(table.column("source").to_pylist(), table.column("error").to_pylist())
            if err is None
        }

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def _read_all(self) -> pa.Table:
        tables = [pq.read_table(self.path, schema=SCHEMA)] if self.path.exists() else []
        tables += [pq.read_table(p, schema=SCHEMA) for p in self._part_files()]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def _atomic_write(self, table: pa.Table, dest: Path) -> None:
        tmp = dest.with_name(dest.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, dest)

    def write(self, results: Iterable[ImageResult]) -> int:
        """Append results, checkpointing every :data:`CHECKPOINT_EVERY` images, then merge.

        Returns how many faces the merged table holds.
        """
        self.parts.mkdir(parents=True, exist_ok=True)
        pending: list[dict[str, object]] = []
        count = len(self._part_files())

        def flush() -> None:
            nonlocal count, pending
            if pending:
                self._atomic_write(pa.Table.from_pylist(pending, schema=SCHEMA),
                                   self.parts / f"part-{count:06d}.parquet")
                count += 1
                pending = []

        for n, result in enumerate(results, 1):
            pending.extend(_rows(result))
            self.done.add(result.source)
            if n % CHECKPOINT_EVERY == 0:
                flush()
        flush()
        merged = self._without_stale_errors(self._read_all())
        self._atomic_write(merged, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return int(pa.compute.sum(pa.compute.greater_equal(merged.column("face_index"), 0)).as_py() or 0)

    @staticmethod
    def _without_stale_errors(table: pa.Table) -> pa.Table:
        """Keep one error row per source that still fails (the newest: rows are oldest first)
        and none for a source that later succeeded, so re-runs never pile up error rows."""
        sources, errors = table.column("source").to_pylist(), table.column("error").to_pylist()
        succeeded = {s for s, e in zip(sources, errors) if e is None}
        newest_error = {s: i for i, (s, e) in enumerate(zip(sources, errors)) if e is not None}
        keep = [
            e is None or (s not in succeeded and newest_error[s] == i)
            for i, (s, e) in enumerate(zip(sources, errors))
        ]
        return table.filter(pa.array(keep))
