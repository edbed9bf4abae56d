"""The gallery's in-memory vector indexes, one per collection, and their snapshot files.

The store is the truth: an index serves a collection at the ``version`` it was built or last
changed at, is changed in place after each committed write, and is rebuilt from the store (or
loaded from its snapshot file, when that matches) whenever it missed a change. Snapshot files
are written only under the writers' lock for the version the store holds, and deleted inside a
deleting transaction before it commits, so no file ever holds an erased template.

With ``milvus:<uri>`` there is no in-memory index and no snapshot file: each collection's index
is a Milvus collection shared by every process, and the version it matches is kept in Milvus
(:mod:`visage.gallery.milvus`), so the same protocol holds across servers. Every change to a
Milvus collection (rebuild, additions, an erasure's partition rewrite) is made under the store's
cross-process lock (:meth:`visage.store.Store.exclusive`), so two servers never interleave: a
rebuild reads the store's rows only once it holds the lock, and an erasure waits for it, so no
rebuild puts back a vector an erasure took out, and no rewrite drops another's additions.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..store import CollectionRow, Store, TemplateRow, open_private, private_dir
from .index import IndexSpec, VectorIndex, load_index, make_index
from .milvus import MilvusIndex, milvus_client

AUTO_FAISS_AT = 50_000
"""With ``index="auto"``, collections of this many templates or more get :data:`AUTO_FAISS_SPEC`."""

AUTO_FAISS_SPEC = "faiss:IVF1024,PQ32np,RFlat;nprobe=32,k_factor_rf=8"
"""Measured in docs/performance-gallery.md at 1M templates on 2 cores: recall@1 0.999 against
exact search for same-person probes, p50 1.1 ms / p99 5.5 ms a query, 75 s to build (HNSW32
needs efSearch > 256 for 0.99 there and 12 minutes to build)."""

AUTO_FAISS_LARGE_AT = 4_000_000
"""From this many templates ``auto`` builds :data:`AUTO_FAISS_LARGE_SPEC`: with 1,024 lists a
query scans a fixed share of the gallery, so its time grows with it (p99 23 ms at 10M, past the
20 ms goal), while 4,096 lists cost ~200 s to train at any size (docs/gallery.md)."""

AUTO_FAISS_LARGE_SPEC = "faiss:IVF4096,PQ32np,RFlat;nprobe=64,k_factor_rf=8"
"""Measured in docs/gallery.md on 2 cores: at 10M templates p50 2.8 ms / p99 3.1 ms, recall@1
0.996; at 2M p50 1.3 ms / p99 1.7 ms, recall@1 1.000."""


def auto_spec(count: int) -> str:
    """The index ``auto`` builds for ``count`` templates: exact below :data:`AUTO_FAISS_AT`,
    then IVF with 1,024 lists, then 4,096 lists from :data:`AUTO_FAISS_LARGE_AT`."""
    if count >= AUTO_FAISS_LARGE_AT:
        return AUTO_FAISS_LARGE_SPEC
    return AUTO_FAISS_SPEC if count >= AUTO_FAISS_AT else "exact"

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass
class _Loaded:
    """An in-memory index and the collection version it matches."""

    index: VectorIndex
    version: int


def _locked(
    method: Callable[Concatenate[IndexCache, _P], _T],
) -> Callable[Concatenate[IndexCache, _P], _T]:
    """Run a method that reads or changes the in-memory indexes under :attr:`IndexCache.lock`."""

    def locked(self: IndexCache, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class IndexCache:
    """The indexes of a gallery's collections (``spec``: an index spec or ``auto``) on
    ``store``, with snapshot files in ``folder`` (``None``: none are written)."""

    def __init__(self, spec: str, folder: Path | None, store: Store) -> None:
        self._spec = spec
        self._store = store
        parsed = None if spec == "auto" else IndexSpec.parse(spec)
        self._milvus_uri = parsed.factory if parsed and parsed.kind == "milvus" else None
        self._milvus: Any = None  # the client, made on first use
        self._shared: dict[int, MilvusIndex] = {}
        self._folder = None if self._milvus_uri else folder
        self._loaded: dict[int, _Loaded] = {}
        self._saved: dict[int, int] = {}
        self._rebuilt: set[int] = set()  # indexes rebuilt by a search, not yet saved
        # Guards the in-memory indexes only. Readers take it, never the gallery's writers'
        # lock, and no one holds it while waiting for the database: a reader that holds a
        # snapshot and waited on a writer that waits on the database would stall both (and, on
        # SQLite, a WAL truncation in another process) for the whole busy timeout.
        self.lock = threading.RLock()

    @property
    def persistent(self) -> bool:
        """Whether snapshot files are written."""
        return self._folder is not None

    @property
    def rebuilt(self) -> bool:
        """Whether a search rebuilt an index that is not saved yet."""
        return bool(self._rebuilt)

    @_locked
    def unsaved(self) -> list[int]:
        """The collections whose index changed since its snapshot was saved (and forget which
        searches rebuilt: the caller saves them now)."""
        self._rebuilt.clear()
        return [c for c, loaded in self._loaded.items() if self._saved.get(c) != loaded.version]

    @_locked
    def forget(self, coll_id: int) -> None:
        """Drop a deleted collection's index (in Milvus: its collection and files)."""
        self._loaded.pop(coll_id, None)
        shared = self._shared_index(coll_id)
        if shared is not None:
            with self._exclusive(coll_id):
                shared.drop()
            self._shared.pop(coll_id, None)

    def _exclusive(self, coll_id: int) -> AbstractContextManager[None]:
        """The cross-process lock every change to collection ``coll_id``'s Milvus index takes."""
        return self._store.exclusive(f"milvus-index-{coll_id}")

    def _shared_index(self, coll_id: int, dim: int | None = None) -> MilvusIndex | None:
        """The collection's Milvus index (``None`` without Milvus); ``dim`` ``None``: read
        from Milvus, ``None`` too when Milvus has no such collection."""
        if self._milvus_uri is None:
            return None
        if coll_id not in self._shared:
            if self._milvus is None:
                self._milvus = milvus_client(self._milvus_uri)
            index = MilvusIndex.open(self._milvus, self._milvus_uri, coll_id, dim)
            if index is None:
                return None
            self._shared[coll_id] = index
        return self._shared[coll_id]

    def spec_for(self, count: int) -> str:
        """The index kind for a collection of ``count`` templates (``auto``: :func:`auto_spec`)."""
        return auto_spec(count) if self._spec == "auto" else self._spec

    @_locked
    def after_commit(
        self,
        coll_id: int,
        version: int,
        *,
        added: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None = None,
        removed: Sequence[int] = (),
    ) -> None:
        """Apply a committed change to the in-memory index, or drop it to be rebuilt.

        In Milvus the change is applied where Milvus matched the version before it; removals
        are applied and erased in any case, so no deleted vector waits for a resync there.
        """
        shared = self._shared_index(coll_id)
        if shared is not None:
            with self._exclusive(coll_id):
                before = shared.version()
                if removed:
                    shared.remove(np.asarray(removed, np.int64))
                if before == version - 1:
                    if added is not None:
                        shared.add(*added)
                    shared.set_version(version)
            return
        loaded = self._loaded.get(coll_id)
        if loaded is None:
            return
        if loaded.version != version - 1:
            del self._loaded[coll_id]  # it missed another writer's change: reload on next use
            return
        try:
            if added is not None:
                loaded.index.add(*added)
            if removed:
                loaded.index.remove(np.asarray(removed, np.int64))
            loaded.version = version
        except Exception:
            del self._loaded[coll_id]
            raise

    def _snapshot_meta(self, coll_id: int) -> Path | None:
        return None if self._folder is None else self._folder / f"collection-{coll_id}.json"

    @_locked
    def get(self, session: Session, coll: CollectionRow, *, reading: bool = False) -> VectorIndex:
        """The collection's index, matching the store at ``coll.version``; a writer calls it
        under the gallery's writers' lock.

        In a write transaction (the writers' lock held, the version cannot move) it matches
        exactly. ``reading``: in a read-only snapshot an index of a *later* version also serves
        (its extra templates are not in the snapshot and are dropped when the candidates are
        read; those it lacks were deleted since), and a rebuilt index is not saved as a
        snapshot file (only a writer may, see :meth:`save_snapshot`). A Milvus index behind
        the store also serves a reader (it lacks templates a writer is adding right now); a
        writer rebuilds it from the store. A reader reads Milvus's version again only where the
        store's moved or the Milvus collection is another since (see :meth:`MilvusIndex.version`).
        """
        shared = self._shared_index(coll.id, coll.dim)
        if shared is not None:
            at = shared.version(coll.version if reading else None)  # a writer reads Strong
            if at == coll.version or (reading and at is not None):
                return shared
            self._rebuild_shared(session, coll, shared, reading=reading)
            return shared
        loaded = self._loaded.get(coll.id)
        if loaded is not None and (
            loaded.version == coll.version or (reading and loaded.version > coll.version)
        ):
            return loaded.index
        count = int(
            session.scalar(
                select(func.count())
                .select_from(TemplateRow)
                .where(TemplateRow.collection_id == coll.id)
            )
            or 0
        )
        spec = self.spec_for(count)
        index = self._load_snapshot(coll, count, spec)
        if index is None:
            index = self._rebuild(session, coll, spec)
            self._loaded[coll.id] = _Loaded(index, coll.version)
            if reading:
                self._rebuilt.add(coll.id)
            else:
                self.save_snapshot(coll.id, coll.version)
        else:
            self._loaded[coll.id] = _Loaded(index, coll.version)
            self._saved[coll.id] = coll.version
        return index

    def _load_snapshot(self, coll: CollectionRow, count: int, spec: str) -> VectorIndex | None:
        meta_path = self._snapshot_meta(coll.id)
        if meta_path is None or not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            if (meta["version"], meta["count"], meta["spec"]) != (coll.version, count, spec):
                return None
            index = load_index(meta_path.with_name(meta["file"]))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        return index if index.count() == count and index.dim == coll.dim else None

    def _rebuild_shared(
        self, session: Session, coll: CollectionRow, shared: MilvusIndex, *, reading: bool = False
    ) -> None:
        """Rebuild the Milvus collection from the store (IVF from :data:`AUTO_FAISS_AT`) under
        the cross-process lock. A writer's ``session`` holds the writers' lock and so reads the
        store as it is; a reader's snapshot may predate an erasure whose Milvus change already
        ran, so a reader reads the rows again in a snapshot taken once it holds the lock."""
        with self._exclusive(coll.id):
            if not reading:
                ids, vectors = self._store_rows(session, coll)
                shared.rebuild(ids, vectors, coll.version, large=len(ids) >= AUTO_FAISS_AT)
                return
            if shared.version() is not None:
                return  # another process built it while this one waited
            with self._store.read("rebuild the Milvus index") as fresh:
                now = fresh.get(CollectionRow, coll.id)
                if now is None:
                    return  # deleted meanwhile: nothing to build
                ids, vectors = self._store_rows(fresh, now)
                shared.rebuild(ids, vectors, now.version, large=len(ids) >= AUTO_FAISS_AT)

    @_locked
    def resync(self, session: Session, coll: CollectionRow) -> VectorIndex:
        """Rebuild the collection's index from the store now (a writer, under the writers'
        lock): ``visage resync``, after Milvus was restored or lost writes."""
        shared = self._shared_index(coll.id, coll.dim)
        if shared is not None:
            self._rebuild_shared(session, coll, shared)
            return shared
        self._loaded.pop(coll.id, None)
        return self.get(session, coll)

    @classmethod
    def _rebuild(cls, session: Session, coll: CollectionRow, spec: str) -> VectorIndex:
        index = make_index(spec, coll.dim)
        ids, vectors = cls._store_rows(session, coll)
        if len(ids):
            index.add(ids, vectors)
        return index

    @staticmethod
    def _store_rows(
        session: Session, coll: CollectionRow
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Every template of the collection: ids in order and their vectors."""
        ids: list[int] = []
        blobs: list[bytes] = []
        query = (
            select(TemplateRow.id, TemplateRow.embedding)
            .where(TemplateRow.collection_id == coll.id)
            .order_by(TemplateRow.id)
            .execution_options(yield_per=20_000)
        )
        for template_id, blob in session.execute(query):
            ids.append(template_id)
            blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), "<f4").reshape(len(ids), coll.dim)
        return np.asarray(ids, np.int64), vectors

    @_locked
    def save_snapshot(self, coll_id: int, version: int | None) -> None:
        """Write the in-memory index only if it matches ``version``, the store's version read
        under the writers' lock the caller holds; a stale index (another process deleted since)
        is dropped instead, so no snapshot ever holds a template deleted from the store."""
        meta_path = self._snapshot_meta(coll_id)
        loaded = self._loaded.get(coll_id)
        if meta_path is None or loaded is None or self._saved.get(coll_id) == loaded.version:
            return
        if loaded.version != version:
            del self._loaded[coll_id]
            return
        folder = meta_path.parent
        private_dir(folder)
        data_name = f"collection-{coll_id}-v{loaded.version}.npz"
        tmp = folder / (data_name + ".tmp")
        loaded.index.save(tmp)
        os.replace(tmp, folder / data_name)
        meta = {
            "version": loaded.version,
            "count": loaded.index.count(),
            "spec": loaded.index.spec,
            "dim": loaded.index.dim,
            "file": data_name,
        }
        tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
        with open_private(tmp_meta) as fh:
            fh.write(json.dumps(meta).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_meta, meta_path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in folder.glob(f"collection-{coll_id}-v*.npz*"):
            if old.name != data_name:
                old.unlink(missing_ok=True)
        self._saved[coll_id] = loaded.version

    @_locked
    def drop_snapshot(self, coll_id: int) -> None:
        """Delete a collection's saved snapshot inside the deleting transaction, before it
        commits: once the deletion is visible no snapshot holds the erased templates.

        ``close()`` saves a new snapshot; a rollback or crash only costs a rebuild from the store.
        """
        meta_path = self._snapshot_meta(coll_id)
        if meta_path is None:
            return
        meta_path.unlink(missing_ok=True)
        for old in meta_path.parent.glob(f"collection-{coll_id}-v*.npz*"):
            old.unlink(missing_ok=True)
        self._saved.pop(coll_id, None)
