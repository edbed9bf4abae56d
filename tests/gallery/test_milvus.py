"""The gallery on a Milvus index (``milvus:<uri>``, one Milvus Lite server for the module): the
store stays the truth, a deletion or revocation leaves no byte of the erased vectors in any of
Milvus's files, a second process shares the index without rebuilding it, and ``visage gallery
resync`` rebuilds a Milvus that lost its collection from the store."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import MilvusServer
from visage.gallery import EmbeddingItem, Gallery
from visage.gallery.milvus import MilvusIndex, milvus_client
from visage.store import sqlite_path

from .forensics import folder_holders, stored_embeddings, stored_ids
from .synthetic import CALIBRATION, MODEL, consented_person, near, unit_vectors

PERSONS, PER_PERSON = 12, 4


@pytest.fixture(scope="module")
def gallery(
    milvus_server: MilvusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gallery]:
    """One SQLite store for the module (a Milvus serves one store: collection ids are the
    store's) on the module's Milvus Lite server."""
    db = tmp_path_factory.mktemp("store") / "visage.db"
    g = Gallery(db, index=f"milvus:{milvus_server.uri}", calibrations=[CALIBRATION], actor="t")
    yield g
    g.close()


def _enrolled(g: Gallery, collection: str, seed: int) -> list[str]:
    """A collection of :data:`PERSONS` consented persons with :data:`PER_PERSON` templates each
    (person ``i``'s are noisy copies of ``unit_vectors(PERSONS, seed)[i]``)."""
    g.create_collection(collection, model_id=MODEL)
    ids = [consented_person(g, f"{collection}{i}", collection=collection) for i in range(PERSONS)]
    centres = unit_vectors(PERSONS, seed=seed)
    items = [
        EmbeddingItem(pid, near(centres[i], 0.02, seed=100 * i + j))
        for i, pid in enumerate(ids)
        for j in range(PER_PERSON)
    ]
    g.enroll_many(collection, items)
    return ids


@pytest.mark.parametrize("erasure", ["person.delete", "consent.revoke", "collection.delete"])
def test_erased_vectors_leave_every_milvus_file(
    erasure: str, gallery: Gallery, milvus_server: MilvusServer
) -> None:
    """The attack: grep every file of the Milvus data folder (write-ahead logs, segments,
    tombstones, index files) for an erased template's 512 bytes once the call returned."""
    collection, seed = erasure.replace(".", "-"), len(erasure)
    ids = _enrolled(gallery, collection, seed)
    victim = ids[3]
    centre = unit_vectors(PERSONS, seed=seed)[3]
    assert gallery.identify(collection, centre).best.person_id == victim  # type: ignore[union-attr]
    if erasure == "collection.delete":
        blobs = stored_embeddings(gallery.url, f"collection_id = {_coll_id(gallery, collection)}")
    else:
        blobs = stored_embeddings(gallery.url, "person_id = :p", p=victim)
    assert len(blobs) == (PERSONS if erasure == "collection.delete" else 1) * PER_PERSON
    assert folder_holders(milvus_server.data, blobs), "control: Milvus holds the vectors"
    if erasure == "person.delete":
        gallery.delete_person(collection, victim)
    elif erasure == "consent.revoke":
        gallery.revoke_consent(collection, victim)
    else:
        gallery.delete_collection(collection)
    assert folder_holders(milvus_server.data, blobs) == {}
    if erasure != "collection.delete":
        best = gallery.identify(collection, centre).best
        assert best is None or best.person_id != victim
        survivors = stored_embeddings(gallery.url, "person_id = :p", p=ids[0])
        assert folder_holders(milvus_server.data, survivors), "control: survivors stay"
        assert gallery.index(collection).count() == (PERSONS - 1) * PER_PERSON


def _coll_id(g: Gallery, collection: str) -> int:
    return stored_ids(g.url, f"SELECT id FROM collection WHERE name = '{collection}'")[0]


def test_a_second_process_shares_the_index_and_resync_rebuilds_it(
    gallery: Gallery, milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """Another Gallery on the same store and Milvus finds what the first enrolled at the
    version the first wrote (no rebuild); after Milvus lost the collection, the next search
    rebuilds it from the store, and so does ``visage resync``."""
    ids = _enrolled(gallery, "shared", 99)
    assert gallery.index("shared").count() == PERSONS * PER_PERSON  # a writer builds it
    centre = unit_vectors(PERSONS, seed=99)[5]
    uri = f"milvus:{milvus_server.uri}"
    client = milvus_client(milvus_server.uri)
    coll_id = _coll_id(gallery, "shared")
    shared = MilvusIndex.open(client, milvus_server.uri, coll_id, None)
    assert shared is not None
    version = shared.version()
    with Gallery(gallery.url, index=uri, calibrations=[CALIBRATION]) as other:
        assert other.identify("shared", centre).best.person_id == ids[5]  # type: ignore[union-attr]
        assert shared.version() == version is not None
        shared.drop()  # Milvus lost the collection (a restore from before it existed)
        assert other.identify("shared", centre).best.person_id == ids[5]  # type: ignore[union-attr]
    shared.drop()
    db = str(sqlite_path(gallery.url))
    done = subprocess.run(
        [sys.executable, "-m", "visage", "resync", "--db", db, "-c", "shared",
         "--index", uri, "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"templates": 48' in done.stdout, done.stdout
    assert shared.version() == version
    assert gallery.identify("shared", centre).best.person_id == ids[5]  # type: ignore[union-attr]


def test_an_erasure_waits_for_another_servers_rebuild_that_read_the_vector(
    gallery: Gallery, milvus_server: MilvusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one store and one Milvus: a search on one rebuilds the collection's lost
    Milvus index and is held after reading the store's rows, before inserting them; the other
    deletes a person among those rows. The erasure's Milvus step waits for the rebuild (the
    store's cross-process lock), then takes the vectors out: none is left in Milvus's files.
    Unlocked, the erasure found nothing to erase and the rebuild put the vectors back."""
    ids = _enrolled(gallery, "race", 17)
    victim, centre = ids[2], unit_vectors(PERSONS, seed=17)[2]
    blobs = stored_embeddings(gallery.url, "person_id = :p", p=victim)
    assert gallery.index("race").count() == PERSONS * PER_PERSON  # a writer builds it
    shared = MilvusIndex.open(
        milvus_client(milvus_server.uri), milvus_server.uri, _coll_id(gallery, "race"), None
    )
    assert shared is not None
    shared.drop()  # Milvus lost the collection: the next search rebuilds it
    holding, go, erased = threading.Event(), threading.Event(), threading.Event()
    add = MilvusIndex.add

    def held_add(self: MilvusIndex, template_ids: Any, vectors: Any) -> None:
        if threading.current_thread().name == "search" and not holding.is_set():
            holding.set()
            assert go.wait(60)
        add(self, template_ids, vectors)

    monkeypatch.setattr(MilvusIndex, "add", held_add)
    with Gallery(
        gallery.url, index=f"milvus:{milvus_server.uri}", calibrations=[CALIBRATION]
    ) as other:
        search = threading.Thread(target=gallery.identify, args=("race", centre), name="search")
        search.start()
        assert holding.wait(60), "the search did not rebuild the index"
        erase = threading.Thread(target=lambda: (other.delete_person("race", victim), erased.set()))
        erase.start()
        waited = not erased.wait(5)  # the rebuild holds the lock: the erasure waits for it
        go.set()
        search.join(60)
        erase.join(60)
    assert erased.is_set()
    assert folder_holders(milvus_server.data, blobs) == {}
    assert waited
    survivors = stored_embeddings(gallery.url, "person_id = :p", p=ids[0])
    assert folder_holders(milvus_server.data, survivors), "control: the rebuild's other rows"
    best = gallery.identify("race", centre).best
    assert best is None or best.person_id != victim


def test_the_version_row_keeps_a_timestamp_that_covers_every_write(
    milvus_server: MilvusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timestamp recorded with a version is this process's last write where it wrote, else
    the row's previous one (another server's write came before); searches wait for it, and a
    row without one (an older deployment, or Milvus Lite, which reports 0) keeps Strong. Milvus
    Lite reports no write timestamps, so the test hands each index its own."""
    stamps: dict[MilvusIndex, int] = {}  # each "process's" last write timestamp
    monkeypatch.setattr(MilvusIndex, "_written_ts", lambda self: stamps.get(self, 0))
    index = MilvusIndex(milvus_client(milvus_server.uri), milvus_server.uri, 777, 128)
    other = MilvusIndex(milvus_client(milvus_server.uri), milvus_server.uri, 777, 128)
    stamps[other] = 500  # its own last write, long before
    vectors = unit_vectors(3, seed=5)
    index.rebuild(np.asarray([1], np.int64), vectors[:1], 1, large=False)
    assert index._consistency() == {"consistency_level": "Strong"}  # no write timestamp: Strong
    assert index.version() == 1
    stamps[index] = 1000  # this process writes version 2
    index.add(np.asarray([2], np.int64), vectors[1:2])
    index.set_version(2)
    assert index._consistency() == {"consistency_level": "Customized", "guarantee_timestamp": 1000}
    assert other.version() == 2 and other._consistency()["guarantee_timestamp"] == 1000
    other.set_version(3)  # a version with no write keeps the row's timestamp, not its own 500
    assert index.version() == 3 and index._consistency()["guarantee_timestamp"] == 1000
    client = index._client
    monkeypatch.setattr(client, "query", lambda *a, **k: pytest.fail("read the version row"))
    assert index.version(3) == 3  # the store did not move: the last read answers
    monkeypatch.undo()
    _, found = index.search(vectors[1:2], 1)
    assert found[0][0] == 2
    index.drop()
    assert index.version(3) is None  # a lost collection is seen without reading the row
