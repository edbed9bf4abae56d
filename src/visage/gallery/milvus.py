"""A Milvus collection as a gallery index, shared by every process that names the same Milvus.

``milvus:<uri>``: ``<uri>`` is a Milvus standalone or cluster (``http://host:19530``) or a
Milvus Lite data folder (a path ending in ``.db``; Milvus Lite then runs inside this process and
locks the folder, so several processes share one Milvus Lite only through its server,
``milvus-lite server --data-dir <folder> --port <p>``, named as ``milvus:http://127.0.0.1:<p>``).

One Milvus collection per Visage collection (``visage_c<id>``), the template id as primary key,
float32 vectors with the L2 metric (Milvus reports squared L2; :meth:`MilvusIndex.search`
returns its square root, the gallery's distance). The store stays the truth: the collection
version an index matches is kept in Milvus (collection ``visage_versions``), so every server
sees the same one, and a collection whose version is not the store's is rebuilt from the store
by a writer (``visage resync``) rather than trusted. With the version the writer records a
Milvus timestamp no earlier than any write up to it; searches wait for that timestamp only, not
for a Milvus server's next time tick as a Strong read does (see docs/gallery.md).

Erasure: a Milvus delete only writes a tombstone; the vectors stay in the segment files until a
compaction rewrites them, which Milvus Lite 3.2 never does for a segment alone (its
``compact()`` is a no-op; its background merge needs 4 files of one size class and skips
segments over 100,000 rows). So templates live in partitions of :data:`PARTITION_IDS`
consecutive ids, and :meth:`MilvusIndex.remove` deletes, then rewrites each touched partition
under a new name from its live rows and drops the old one, whose folder Milvus Lite deletes at
once. A Milvus server deletes a dropped partition's segments at its next garbage collection
(``dataCoord.gc.dropTolerance``, 3 hours by default), see docs/gallery.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .index import Ids, Vectors, _check, _empty_result

PARTITION_IDS = 50_000
"""Template ids ``[k * PARTITION_IDS, (k + 1) * PARTITION_IDS)`` share partition ``k``: an
erasure rewrites at most this many vectors (25 MB at d=128)."""

BATCH = 10_000
"""Rows per insert or query call (Milvus caps a gRPC message at 64 MB)."""

NPROBE = 32
"""IVF lists a search scans in each segment (of nlist=1024)."""

_VERSIONS = "visage_versions"


class _Read(NamedTuple):
    """A version row as last read: the Milvus collection's id (a rebuild makes a new one), the
    store version it matches, and the timestamp that covers its writes (``None``: a row written
    before timestamps were kept, so searches read Strong)."""

    collection: int
    version: int
    ts: int | None


def milvus_client(uri: str) -> Any:
    """A ``pymilvus.MilvusClient`` on ``uri``; a one-line error naming the extra without it."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise RuntimeError(
            "the milvus index needs pymilvus: pip install 'visage[milvus]'"
        ) from None
    return MilvusClient(uri=uri)


def _partition(bucket: int, generation: int) -> str:
    return f"b{bucket}_g{generation}"


def _bucket_of(name: str) -> tuple[int, int] | None:
    """``(bucket, generation)`` of one of our partition names; ``None`` for ``_default``."""
    if not name.startswith("b") or "_g" not in name:
        return None
    bucket, _, generation = name[1:].partition("_g")
    return int(bucket), int(generation)


class MilvusIndex:
    """The index of Visage collection ``coll_id`` in the Milvus at ``uri`` (see the module)."""

    def __init__(self, client: Any, uri: str, coll_id: int, dim: int) -> None:
        self._client = client
        self._uri = uri
        self._dim = dim
        self.coll_id = coll_id
        self.name = f"visage_c{coll_id}"
        self._nprobe = NPROBE
        self._lite: bool | None = None  # whether the server is Milvus Lite, asked once
        self._read: _Read | None = None  # the version row, as this index last read it
        self._since = 0  # this process's last write timestamp when that row was read

    @classmethod
    def open(cls, client: Any, uri: str, coll_id: int, dim: int | None) -> MilvusIndex | None:
        """The index of ``coll_id``; ``dim`` ``None``: read from Milvus (``None`` when Milvus
        holds no such collection)."""
        index = cls(client, uri, coll_id, dim or 0)
        if dim is None:
            if not client.has_collection(index.name):
                return None
            fields = client.describe_collection(index.name)["fields"]
            index._dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "v")
        return index

    @property
    def spec(self) -> str:
        return f"milvus:{self._uri}"

    @property
    def dim(self) -> int:
        return self._dim

    # ------------------------------------------------------------------ version protocol

    def _ensure_versions(self) -> None:
        if not self._client.has_collection(_VERSIONS):
            self._client.create_collection(
                _VERSIONS, dimension=2, primary_field_name="id", id_type="int",
                vector_field_name="v", metric_type="L2", consistency_level="Strong",
            )  # fmt: skip

    def _collection_id(self) -> int | None:
        """The Milvus collection's id (``None``: there is none), asked without waiting for the
        server's time tick (``has_collection`` first: describing a missing one logs an error)."""
        from pymilvus.exceptions import DescribeCollectionException

        if not self._client.has_collection(self.name):
            return None
        try:
            return int(self._client.describe_collection(self.name)["collection_id"])
        except DescribeCollectionException:
            return None  # dropped since

    def _written_ts(self) -> int:
        """The timestamp of this process's last write to the collection (0: none), which
        pymilvus keeps for Session reads; ``MilvusClient.insert``/``delete`` do not return it."""
        from pymilvus.client import ts_utils

        db = self._client._generate_call_context().get_db_name()
        address = self._client._get_connection().server_address
        return int(ts_utils.get_collection_ts(self.name, address, db))

    def version(self, expected: int | None = None) -> int | None:
        """The store version this Milvus collection matches; ``None``: not built.

        ``expected`` (the store's version, a search's check): where the collection is still the
        one this index last read at that version, that read answers, without the Strong read
        of the version row that waits for the server's time tick (~200 ms on a server).
        """
        collection = self._collection_id()
        if collection is None:
            self._read = None
            return None
        read = self._read
        if expected is not None and read is not None and read[:2] == (collection, expected):
            return expected
        self._ensure_versions()
        rows = self._client.query(
            _VERSIONS, ids=[self.coll_id], output_fields=["version", "ts"],
            consistency_level="Strong",
        )  # fmt: skip
        self._since = self._written_ts()
        if not rows:
            self._read = None
            return None
        ts = rows[0].get("ts")
        self._read = _Read(collection, int(rows[0]["version"]), int(ts) if ts else None)
        return self._read.version

    def set_version(self, version: int) -> None:
        """Record that the collection now matches the store at ``version``, with a timestamp no
        earlier than any write to it: this process's last, where it wrote since it read the row
        (all other writes came before, under the store's lock), else the row's own."""
        self._ensure_versions()
        written = self._written_ts()
        if written > self._since:
            ts: int | None = written
        else:
            ts = self._read.ts if self._read is not None else None
        row: dict[str, Any] = {"id": self.coll_id, "v": [0.0, 0.0], "version": int(version)}
        if ts is not None:
            row["ts"] = ts
        self._client.upsert(_VERSIONS, [row])
        collection = self._collection_id()
        self._read = None if collection is None else _Read(collection, int(version), ts)
        self._since = written

    def rebuild(self, ids: Ids, vectors: Vectors, version: int, *, large: bool) -> None:
        """Drop the Milvus collection and build it again from ``ids``/``vectors`` (the store's
        rows at ``version``): ``large``, IVF_FLAT (nlist=1024, nprobe=32 at search, as the
        in-process ``auto`` IVF; see docs/gallery.md), else FLAT (exact)."""
        self.drop()
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=self._dim)
        params = self._client.prepare_index_params()
        if large:
            params.add_index("v", index_type="IVF_FLAT", metric_type="L2", params={"nlist": 1024})
        else:
            params.add_index("v", index_type="FLAT", metric_type="L2")
        self._client.create_collection(
            self.name, schema=schema, index_params=params, consistency_level="Strong"
        )
        self.add(ids, vectors)
        self._client.flush(self.name)
        self.set_version(version)

    def drop(self) -> None:
        """Delete the Milvus collection (its files go with it) and its version record."""
        if self._client.has_collection(self.name):
            self._client.drop_collection(self.name)
        self._read, self._since = None, self._written_ts()
        if self._client.has_collection(_VERSIONS):
            self._client.delete(_VERSIONS, ids=[self.coll_id])

    # ------------------------------------------------------------------ VectorIndex

    def _live_partitions(self) -> dict[int, str]:
        """Bucket -> partition name, the highest generation where a rewrite left two."""
        found: dict[int, tuple[int, str]] = {}
        for name in self._client.list_partitions(self.name):
            parsed = _bucket_of(name)
            if parsed is not None and parsed[1] >= found.get(parsed[0], (-1, ""))[0]:
                found[parsed[0]] = (parsed[1], name)
        return {bucket: name for bucket, (_, name) in found.items()}

    def _partition_for(self, bucket: int, partitions: dict[int, str]) -> str:
        """The bucket's partition in ``partitions`` (read now: another server may have
        rewritten it), created when new."""
        if bucket not in partitions:
            partitions[bucket] = _partition(bucket, 0)
            self._client.create_partition(self.name, partitions[bucket])
        return partitions[bucket]

    def _insert(self, partition: str, ids: Ids, vectors: Vectors) -> None:
        for start in range(0, len(ids), BATCH):
            rows = [
                {"id": int(i), "v": v}
                for i, v in zip(ids[start : start + BATCH], vectors[start : start + BATCH])
            ]
            self._client.insert(self.name, rows, partition_name=partition)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        id_arr, vec = _check(ids, vectors, self._dim)
        buckets = id_arr // PARTITION_IDS
        partitions = self._live_partitions()
        for bucket in np.unique(buckets):
            mine = buckets == bucket
            self._insert(self._partition_for(int(bucket), partitions), id_arr[mine], vec[mine])

    def _rows(self, partition: str) -> Iterator[tuple[int, list[float]]]:
        iterator = self._client.query_iterator(
            self.name, batch_size=BATCH, filter="id >= 0", output_fields=["id", "v"],
            partition_names=[partition],
        )  # fmt: skip
        try:
            while batch := iterator.next():
                for row in batch:
                    yield int(row["id"]), row["v"]
        finally:
            iterator.close()

    def _release(self, partition: str) -> None:
        """Release a partition before it is dropped, as a Milvus server requires; Milvus Lite
        cannot release one partition (it answers UNIMPLEMENTED) and drops a loaded one."""
        if self._lite is None:
            self._lite = str(self._client.get_server_version()).startswith("milvus_lite")
        if not self._lite:
            self._client.release_partitions(self.name, [partition])

    def _until_visible(self) -> None:
        """Wait until the server's searches see this process's last write: a search on an
        older version row's timestamp sees only what the server has applied when it runs, so
        an erasure drops no partition before its rewritten copy is visible."""
        self._client.query(
            self.name, filter="", output_fields=["count(*)"], consistency_level="Customized",
            guarantee_timestamp=self._written_ts(),
        )  # fmt: skip

    def remove(self, ids: Ids) -> int:
        """Delete ``ids`` and erase them from Milvus's files: each partition that held one is
        rewritten from its live rows under the next generation's name, then dropped."""
        id_arr = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(id_arr) or not self._client.has_collection(self.name):
            return 0
        present = self._client.query(self.name, ids=[int(i) for i in id_arr], output_fields=["id"])
        gone = np.asarray(sorted(int(r["id"]) for r in present), np.int64)
        if not len(gone):
            return 0
        self._client.delete(self.name, ids=[int(i) for i in gone])
        self._client.flush(self.name)
        partitions = self._live_partitions()
        for bucket in np.unique(gone // PARTITION_IDS):
            old = partitions.get(int(bucket))
            if old is None:
                continue
            generation = (_bucket_of(old) or (0, 0))[1] + 1
            new = _partition(int(bucket), generation)
            self._client.create_partition(self.name, new)
            rows = list(self._rows(old))
            if rows:
                keep = np.asarray([r[0] for r in rows], np.int64)
                self._insert(new, keep, np.asarray([r[1] for r in rows], np.float32))
            self._client.flush(self.name)
            self._until_visible()
            self._release(old)
            self._client.drop_partition(self.name, old)
        self._client.flush(self.name)
        return len(gone)

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists scanned per segment (default :data:`NPROBE`): more costs time, buys recall."""
        self._nprobe = nprobe

    def _consistency(self) -> dict[str, Any]:
        """A search's or count's consistency: wait only until the timestamp of the version row
        last read (normally past already: a few ms), so it sees every write up to that version
        from any process; Strong (a wait for the next time tick) where that row has none."""
        read = self._read
        if read is None or read.ts is None:
            return {"consistency_level": "Strong"}
        return {"consistency_level": "Customized", "guarantee_timestamp": read.ts}

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self._dim)
        out_d, out_i = _empty_result(len(q), k)
        if not len(q) or k <= 0:
            return out_d, out_i
        hits = self._client.search(
            self.name, data=list(q), limit=k, anns_field="v", output_fields=[],
            search_params={"metric_type": "L2", "params": {"nprobe": self._nprobe}},
            **self._consistency(),
        )  # fmt: skip
        for row, found in enumerate(hits):
            for col, hit in enumerate(list(found)[:k]):
                out_i[row, col] = int(hit["id"])
                out_d[row, col] = np.sqrt(max(float(hit["distance"]), 0.0))
        return out_d, out_i

    def count(self) -> int:
        if not self._client.has_collection(self.name):
            return 0
        rows = self._client.query(
            self.name, filter="", output_fields=["count(*)"], **self._consistency()
        )
        return int(rows[0]["count(*)"])

    def ids(self) -> Ids:
        found: list[int] = []
        for partition in self._live_partitions().values():
            found.extend(i for i, _ in self._rows(partition))
        return np.asarray(sorted(found), np.int64)

    def save(self, path: Path) -> None:
        """A Milvus index has no snapshot file: it lives in Milvus."""
        raise TypeError(f"{self.spec} keeps its index in Milvus, not in {path}")
