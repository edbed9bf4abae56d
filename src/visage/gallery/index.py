"""Vector indexes: candidate generators for identify, rebuildable from the store at any time.

An index maps template ids (``int64``) to L2-normalised ``float32`` vectors and answers
k-nearest-neighbour queries with Euclidean distances on the unit sphere (``0`` same direction,
``2`` opposite) — the same distance as :func:`visage.decision.distances`. The gallery re-scores
the candidates it returns with that primitive, so an approximate index can only cost recall,
never change a score or a decision.

Indexes are described by one string, in the manner of ``faiss.index_factory``:

- ``exact`` — numpy, one BLAS matrix-vector product per query. Exact; the default under
  ~50k templates (1M x 128 floats is ~40 ms a query on 2 cores, memory-bound).
- ``faiss:<factory>[;<knobs>]`` — any faiss factory string with search-time knobs after ``;``,
  e.g. ``faiss:HNSW32,Flat;efSearch=128`` (graph; no training; ~0.8 KB per vector at d=128) or
  ``faiss:IVF4096,PQ32np,RFlat;nprobe=32,k_factor_rf=8`` (inverted lists, compressed codes,
  then an exact refine step over ``k x k_factor_rf`` candidates; ``np`` skips faiss's
  polysemous training, which costs about a minute and only serves polysemous search).
  See docs/performance-gallery.md.
- ``milvus:<uri>`` — a Milvus collection shared by every server naming the same Milvus (a
  Milvus Lite folder ``*.db`` or ``http://host:19530``); see :mod:`visage.gallery.milvus`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from ..decision import distances
from ..store import open_private

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]

faiss: Any = _faiss
"""faiss's SWIG stubs do not describe its keyword constructors, so it is used untyped."""

COMPACT_FRACTION = 0.25
"""A faiss index is rebuilt in place once this fraction of its entries are deletion marks."""


class VectorIndex(Protocol):
    """What the gallery needs from an index. ``search`` pads missing results with id ``-1``."""

    @property
    def spec(self) -> str:
        """The description this index was built from (``exact`` or ``faiss:…``)."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Add ``vectors (n, d) float32`` under ``ids (n,) int64`` (ids must be new)."""
        ...

    def remove(self, ids: Ids) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        """``distances (m, k) float32`` ascending and ``ids (m, k) int64`` (``-1``/``inf`` pad)."""
        ...

    def count(self) -> int:
        """Number of live vectors."""
        ...

    def ids(self) -> Ids:
        """Every live id, sorted."""
        ...

    def save(self, path: Path) -> None:
        """Write the index to one file and fsync it (the caller renames it into place)."""
        ...


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index description: ``kind`` ``exact``, ``faiss`` (with the factory and the
    knobs) or ``milvus`` (``factory``: the Milvus URI)."""

    kind: str
    factory: str = ""
    knobs: str = ""

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """Parse ``exact``, ``faiss:<factory>[;<knobs>]`` or ``milvus:<uri>``; raises
        ``ValueError`` otherwise."""
        if text == "exact":
            return cls("exact")
        if text.startswith("milvus:") and len(text) > len("milvus:"):
            return cls("milvus", text[len("milvus:") :].strip())
        if text.startswith("faiss:") and len(text) > len("faiss:"):
            factory, _, knobs = text[len("faiss:") :].partition(";")
            return cls("faiss", factory.strip(), knobs.strip())
        raise ValueError(
            f"unknown index {text!r}: use 'exact', 'faiss:<factory>[;<knobs>]' or 'milvus:<uri>'"
        )

    def __str__(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "milvus":
            return f"milvus:{self.factory}"
        return f"faiss:{self.factory}" + (f";{self.knobs}" if self.knobs else "")


def _check(ids: npt.ArrayLike, vectors: npt.ArrayLike, dim: int) -> tuple[Ids, Vectors]:
    id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    vec = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    if len(id_arr) != len(vec):
        raise ValueError(f"{len(id_arr)} ids for {len(vec)} vectors")
    if len(np.unique(id_arr)) != len(id_arr):
        raise ValueError("duplicate ids in one add()")
    return id_arr, vec


def _empty_result(m: int, k: int) -> tuple[Vectors, Ids]:
    return np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64)


def _write_npz(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    with open_private(path) as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())


class ExactIndex:
    """Brute force over a contiguous ``(n, d)`` matrix; removal swaps in the last row."""

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self._vectors = np.empty((0, dim), np.float32)
        self._ids = np.empty(0, np.int64)
        self._n = 0
        self._pos: dict[int, int] = {}

    @property
    def spec(self) -> str:
        return "exact"

    @property
    def dim(self) -> int:
        return self._dim

    def add(self, ids: Ids, vectors: Vectors) -> None:
        id_arr, vec = _check(ids, vectors, self._dim)
        clash = [int(i) for i in id_arr if int(i) in self._pos]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]}")
        need = self._n + len(id_arr)
        if need > len(self._ids):
            cap = max(need, 2 * len(self._ids), 1024)
            vectors_new = np.empty((cap, self._dim), np.float32)
            vectors_new[: self._n] = self._vectors[: self._n]
            ids_new = np.empty(cap, np.int64)
            ids_new[: self._n] = self._ids[: self._n]
            self._vectors, self._ids = vectors_new, ids_new
        self._vectors[self._n : need] = vec
        self._ids[self._n : need] = id_arr
        self._pos.update((int(i), self._n + j) for j, i in enumerate(id_arr))
        self._n = need

    def remove(self, ids: Ids) -> int:
        removed = 0
        for raw in np.asarray(ids, dtype=np.int64).reshape(-1):
            pos = self._pos.pop(int(raw), None)
            if pos is None:
                continue
            last = self._n - 1
            if pos != last:
                self._vectors[pos] = self._vectors[last]
                self._ids[pos] = self._ids[last]
                self._pos[int(self._ids[pos])] = pos
            self._n = last
            removed += 1
        return removed

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        q = np.asarray(queries, dtype=np.float32).reshape(-1, self._dim)
        out_d, out_i = _empty_result(len(q), k)
        top = min(k, self._n)
        if top == 0:
            return out_d, out_i
        matrix = self._vectors[: self._n]
        for row, query in enumerate(q):
            dist = distances(query, matrix)
            part = np.argpartition(dist, top - 1)[:top] if top < self._n else np.arange(self._n)
            order = part[np.argsort(dist[part], kind="stable")]
            out_d[row, :top] = dist[order]
            out_i[row, :top] = self._ids[order]
        return out_d, out_i

    def count(self) -> int:
        return self._n

    def ids(self) -> Ids:
        return np.sort(self._ids[: self._n])

    def save(self, path: Path) -> None:
        _write_npz(
            path,
            {
                "spec": np.array("exact"),
                "ids": self._ids[: self._n],
                "vectors": self._vectors[: self._n],
            },
        )

    @classmethod
    def from_arrays(cls, ids: Ids, vectors: Vectors) -> ExactIndex:
        index = cls(vectors.shape[1])
        index.add(ids, vectors)
        return index


@contextmanager
def _one_thread_for(queries: int) -> Iterator[None]:
    """One OpenMP thread in the calling thread (libgomp keeps the count per thread) while it
    searches a single query: the team gains nothing on one query, and its idle threads spin
    for CPU the server's other requests need (an in-process identify at 100k, IVF, load 2:
    13-17 ms of CPU a call with the default team, 6.7-7.7 ms with one thread; see
    docs/performance-service.md). Batches keep the team."""
    if queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _search_params(index: Any, sel: Any, keep: list[Any]) -> Any:
    """faiss search parameters mirroring ``index``'s own knobs, plus the id selector ``sel``.

    Passing parameters to ``search`` overrides the knobs set on the index, so they are copied
    from it; ``keep`` holds every object faiss only points to, for as long as they are used.
    """
    index = faiss.downcast_index(index)
    params: Any
    if isinstance(index, faiss.IndexRefine):
        base = _search_params(index.base_index, sel, keep)
        params = faiss.IndexRefineSearchParameters(k_factor=index.k_factor, base_index_params=base)
    elif isinstance(index, faiss.IndexPreTransform):
        inner = _search_params(index.index, sel, keep)
        params = faiss.SearchParametersPreTransform(index_params=inner)
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    else:
        params = faiss.SearchParameters(sel=sel)
    keep.append(params)
    return params


def _flat_storages(index: Any) -> tuple[list[Any], bool]:
    """The ``IndexFlat`` parts of ``index`` that hold raw vectors, and whether that is all it holds.

    An HNSW graph over ``Flat`` storage, a bare ``Flat``, and the ``RFlat`` refine stage keep
    raw vectors that can be erased in place; IVF lists and PQ codes cannot.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        base, base_flat = _flat_storages(index.base_index)
        refine, refine_flat = _flat_storages(index.refine_index)
        return base + refine, base_flat and refine_flat
    if isinstance(index, faiss.IndexHNSW):
        return _flat_storages(index.storage)
    if isinstance(index, faiss.IndexFlat):
        return [index], True
    return [], False


class FaissIndex:
    """A faiss index built from a factory string; positions map to template ids.

    faiss's graph indexes cannot delete, so removal marks the entry dead and searches skip dead
    entries with a bitmap selector; the removed vectors are overwritten with zeros at once where
    they are stored raw (``Flat``, HNSW over ``Flat``, ``RFlat``). When :data:`COMPACT_FRACTION`
    of entries are dead the live vectors are reconstructed and re-added; an index holding other
    codes (IVF lists, PQ) is also compacted before it is saved, so a snapshot never holds a
    removed template.
    """

    def __init__(self, dim: int, factory: str, knobs: str = "", *, built: Any = None) -> None:
        self._dim = dim
        self._factory = factory
        self._knobs = knobs
        try:
            self._index = built if built is not None else faiss.index_factory(
                dim, factory, faiss.METRIC_L2
            )
        except RuntimeError as exc:
            raise ValueError(f"invalid faiss factory string {factory!r}: {exc}") from None
        self._apply_knobs()
        self._ids = np.empty(0, np.int64)
        self._live = np.empty(0, bool)
        self._pos: dict[int, int] = {}
        self._dead = 0
        self._params: Any = None
        self._keep: list[Any] = []

    def _apply_knobs(self) -> None:
        if self._knobs:
            try:
                faiss.ParameterSpace().set_index_parameters(self._index, self._knobs)
            except RuntimeError as exc:
                raise ValueError(f"invalid faiss search knobs {self._knobs!r}: {exc}") from None

    def set_knobs(self, knobs: str) -> None:
        """Change the search-time knobs (``efSearch=256``, ``nprobe=64``…) without rebuilding."""
        self._knobs = knobs
        self._apply_knobs()
        self._params = None

    @property
    def spec(self) -> str:
        return str(IndexSpec("faiss", self._factory, self._knobs))

    @property
    def dim(self) -> int:
        return self._dim

    def add(self, ids: Ids, vectors: Vectors) -> None:
        id_arr, vec = _check(ids, vectors, self._dim)
        if not len(id_arr):
            return
        clash = [int(i) for i in id_arr if int(i) in self._pos]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]}")
        if not self._index.is_trained:
            try:
                self._index.train(vec)
            except RuntimeError as exc:
                raise ValueError(
                    f"cannot train {self._factory!r} on {len(vec)} vectors: {exc}"
                ) from None
        start = len(self._ids)
        self._index.add(vec)
        self._ids = np.concatenate([self._ids, id_arr])
        self._live = np.concatenate([self._live, np.ones(len(id_arr), bool)])
        self._pos.update((int(i), start + j) for j, i in enumerate(id_arr))
        self._params = None

    def remove(self, ids: Ids) -> int:
        removed = 0
        positions = []
        for raw in np.asarray(ids, dtype=np.int64).reshape(-1):
            pos = self._pos.pop(int(raw), None)
            if pos is not None:
                self._live[pos] = False
                positions.append(pos)
                removed += 1
        for flat in _flat_storages(self._index)[0]:
            stored = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self._dim)
            stored.reshape(-1, self._dim)[positions] = 0.0
        if removed:
            self._dead += removed
            self._params = None
            if self._dead > COMPACT_FRACTION * len(self._ids):
                self._compact()
        return removed

    def _compact(self) -> None:
        """Rebuild the faiss structure from the live entries' stored vectors."""
        keep = np.flatnonzero(self._live)
        try:
            ivf = faiss.extract_index_ivf(self._index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            ivf.make_direct_map()
        vectors = self._index.reconstruct_batch(keep) if len(keep) else np.empty((0, self._dim))
        ids = self._ids[keep]
        self._index.reset()
        self._ids = np.empty(0, np.int64)
        self._live = np.empty(0, bool)
        self._pos = {}
        self._dead = 0
        self.add(ids, vectors.astype(np.float32))

    def _search_parameters(self) -> Any:
        """``None`` without deletion marks; otherwise parameters carrying the live-bitmap selector."""
        if not self._dead:
            return None
        if self._params is None:
            bitmap = np.packbits(self._live, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self._live), faiss.swig_ptr(bitmap))
            self._keep = [bitmap, selector]
            self._params = _search_params(self._index, selector, self._keep)
        return self._params

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self._dim)
        out_d, out_i = _empty_result(len(q), k)
        top = min(k, self.count())
        if top == 0:
            return out_d, out_i
        with _one_thread_for(len(q)):
            d2, pos = self._index.search(q, top, params=self._search_parameters())
        found = pos >= 0
        out_i[:, :top] = np.where(found, self._ids[np.where(found, pos, 0)], -1)
        out_d[:, :top] = np.where(found, np.sqrt(np.maximum(d2, 0.0)), np.inf)
        return out_d, out_i

    def count(self) -> int:
        return len(self._pos)

    def ids(self) -> Ids:
        return np.sort(self._ids[self._live])

    def save(self, path: Path) -> None:
        if self._dead and not _flat_storages(self._index)[1]:
            self._compact()
        _write_npz(
            path,
            {
                "spec": np.array(self.spec),
                "faiss": faiss.serialize_index(self._index),
                "ids": self._ids,
                "live": self._live,
            },
        )

    @classmethod
    def restore(cls, spec: IndexSpec, built: Any, ids: Ids, live: npt.NDArray[np.bool_]) -> FaissIndex:
        """The index ``save`` wrote: the faiss structure, position-to-id map and live marks."""
        index = cls(built.d, spec.factory, spec.knobs, built=built)
        index._ids = ids.astype(np.int64)
        index._live = live.astype(bool)
        index._pos = {int(index._ids[p]): int(p) for p in np.flatnonzero(index._live)}
        index._dead = int((~index._live).sum())
        return index


def make_index(spec: str | IndexSpec, dim: int) -> VectorIndex:
    """An empty index for ``spec`` (see the module docstring for the forms)."""
    parsed = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    if parsed.kind == "exact":
        return ExactIndex(dim)
    if parsed.kind == "milvus":
        raise ValueError("a Milvus index belongs to one collection: see IndexCache")
    return FaissIndex(dim, parsed.factory, parsed.knobs)


def load_index(path: Path) -> VectorIndex:
    """Read an index written by ``save``; ``ValueError``/``OSError`` when it is unreadable."""
    with np.load(path, allow_pickle=False) as data:
        spec = IndexSpec.parse(str(data["spec"]))
        if spec.kind == "exact":
            return ExactIndex.from_arrays(data["ids"], data["vectors"])
        built = faiss.deserialize_index(data["faiss"])
        return FaissIndex.restore(spec, built, data["ids"], data["live"])
