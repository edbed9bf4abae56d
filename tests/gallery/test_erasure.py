"""Erasure is complete on disk: no file of the store keeps a deleted template's bytes.

Two holes, each attacked here: a process saving a stale in-memory index after another process
deleted (the snapshot then held the deleted templates), and SQLite's write-ahead log keeping
earlier images of the erased rows' pages. The bytes looked for are the ones the store wrote,
read from the template rows before the deletion, and each test first finds them on disk.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from visage.gallery import EmbeddingItem, Gallery

from .forensics import holders, stored_embeddings, stored_ids
from .synthetic import CALIBRATION, MODEL, consented_person, unit_vectors

WORKER = Path(__file__).with_name("snapshot_worker.py")


def _snapshot_hits(index_dir: Path, blobs: list[bytes]) -> list[str]:
    """Files of the index folder holding any of ``blobs``."""
    files = sorted(p for p in index_dir.iterdir() if p.is_file()) if index_dir.is_dir() else []
    return [p.name for p in files if any(b in p.read_bytes() for b in blobs)]


def _ask(worker: subprocess.Popen[str], command: str) -> int:
    """Send one command to the snapshot worker; its answer is the size of its index."""
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(command + "\n")
    worker.stdin.flush()
    answer = worker.stdout.readline()
    assert answer.startswith(f"done {command.split()[0]} "), worker.communicate()[1]
    return int(answer.split()[2])


def test_no_snapshot_ever_holds_a_template_another_process_deleted(
    db_url: str, tmp_path: Path
) -> None:
    """The attack: a process whose index is ahead of its snapshot (it deleted someone itself)
    saves it after another process deleted a person; that save must write nothing."""
    index_dir = tmp_path / "index"
    with Gallery(db_url, index_dir=index_dir, calibrations=[CALIBRATION], actor="tester") as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(8)]
        vectors = unit_vectors(16, seed=21)
        g.enroll_many("people", [EmbeddingItem(ids[i % 8], v) for i, v in enumerate(vectors)])

        def delete_templates(person: str) -> None:
            for template in g.templates("people", person):
                g.delete_template("people", person, template.id)

        erasures: list[Callable[[str], object]] = [
            lambda p: g.delete_person("people", p),
            lambda p: g.revoke_consent("people", p),
            delete_templates,
        ]
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), db_url, str(index_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            for round_, erase in enumerate(erasures):
                victim, own = ids[2 * round_], ids[2 * round_ + 1]
                blobs = stored_embeddings(db_url, "person_id = :p", p=victim)
                assert len(blobs) == 2
                _ask(worker, "load")  # rebuilt at the store's version and saved
                assert _snapshot_hits(index_dir, blobs), "control: the snapshot holds the victim"
                _ask(worker, "delete " + own)  # the worker's index is now ahead of its snapshot
                erase(victim)  # ... and behind the store
                assert not _snapshot_hits(index_dir, blobs)
                _ask(worker, "save")
                assert not _snapshot_hits(index_dir, blobs), "a stale index was saved"
                assert _ask(worker, "load") == 16 - 4 * (round_ + 1)
                assert not _snapshot_hits(index_dir, blobs)
            left = stored_embeddings(db_url, "1 = 1")
            assert len(left) == 4 and _snapshot_hits(index_dir, left)
            _ask(worker, "delete " + ids[6])
            g.delete_collection("people")
            _ask(worker, "close")
            assert worker.wait(timeout=30) == 0
            assert not _snapshot_hits(index_dir, left)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _enrolled_store(db: Path) -> tuple[Gallery, list[str]]:
    """A SQLite store with two collections whose rows share pages, its index saved, and a
    passive checkpoint done, so the templates are in the database file and in the ``-wal``."""
    g = Gallery(db, calibrations=[CALIBRATION], actor="tester")
    ids: list[str] = []
    for name in ("people", "doomed"):
        g.create_collection(name, model_id=MODEL)
        ids += [consented_person(g, f"{name}{i}", collection=name) for i in range(20)]
    vectors = unit_vectors(320, seed=31)
    for start in range(0, 160, 20):  # interleaved batches: many transactions, many WAL frames
        for name, offset in (("people", 0), ("doomed", 20)):
            batch = range(start + 8 * offset, start + 8 * offset + 20)
            g.enroll_many(name, [EmbeddingItem(ids[offset + i % 20], vectors[i]) for i in batch])
    g.index("people")
    g.index("doomed")
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return g, ids


@pytest.mark.parametrize("erasure", ["person.delete", "consent.revoke", "collection.delete"])
def test_erased_bytes_leave_every_store_file_while_it_is_open(
    erasure: str, tmp_path: Path
) -> None:
    """The attack: grep the ``.db``, ``-wal``, ``-shm`` and index files for a deleted template's
    512 bytes, with the store still open, after the deletion and after 60 further writes."""
    db = tmp_path / "store" / "visage.db"
    g, ids = _enrolled_store(db)
    url = g.url
    try:
        victim = ids[20 + 3]
        if erasure == "collection.delete":
            doomed = "(SELECT id FROM collection WHERE name = 'doomed')"
            blobs = stored_embeddings(url, f"collection_id = {doomed}")
        else:
            blobs = stored_embeddings(url, "person_id = :p", p=victim)
        assert len(blobs) == (160 if erasure == "collection.delete" else 8)
        before = holders(db, blobs)
        assert before.get("visage.db") and before.get("visage.db-wal"), before
        assert any(name.endswith(".npz") for name in before), before
        if erasure == "person.delete":
            g.delete_person("doomed", victim)
        elif erasure == "consent.revoke":
            g.revoke_consent("doomed", victim)
        else:
            g.delete_collection("doomed")
        assert holders(db, blobs) == {}
        for i in range(60):
            g.add_person("people", f"after{i}")
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert holders(db, blobs) == {}
        survivors = stored_embeddings(url, "person_id = :p", p=ids[0])
        assert holders(db, survivors).get("visage.db"), "control: the survivors are still there"
        assert g.identify("people", unit_vectors(320, seed=31)[0]).best is not None
    finally:
        g.close()
    assert holders(db, blobs) == {}


def test_a_deleted_collections_index_never_passes_for_one_reusing_its_id(tmp_path: Path) -> None:
    """SQLite gives a new collection the id of the deleted newest one: a gallery still holding
    the deleted one's index (ahead of its snapshot) must neither save it nor search it."""
    db, index_dir = tmp_path / "visage.db", tmp_path / "index"
    holder = Gallery(db, index_dir=index_dir, calibrations=[CALIBRATION], actor="server")
    other = Gallery(db, index_dir=index_dir, calibrations=[CALIBRATION], actor="cli")
    try:
        holder.create_collection("old", model_id=MODEL)
        old = [consented_person(holder, f"Old{i}", collection="old") for i in range(2)]
        vectors = unit_vectors(4, seed=51)
        holder.enroll_many("old", [EmbeddingItem(old[i % 2], v) for i, v in enumerate(vectors)])
        holder.index("old")
        assert _snapshot_hits(index_dir, stored_embeddings(holder.url, "1 = 1")), "control"
        holder.delete_template("old", old[0], holder.templates("old", old[0])[0].id)
        erased = stored_embeddings(holder.url, "1 = 1")
        assert len(erased) == 3
        old_id = stored_ids(holder.url, "SELECT id FROM collection WHERE name = 'old'")

        other.delete_collection("old")
        other.create_collection("new", model_id=MODEL)
        assert stored_ids(holder.url, "SELECT id FROM collection WHERE name = 'new'") == old_id
        fresh = consented_person(other, "New", collection="new")
        for v in unit_vectors(2, seed=52):  # as many changes as the old one had
            other.enroll("new", fresh, v)

        holder.save_indexes()
        assert not _snapshot_hits(index_dir, erased), "the deleted collection's index was saved"
        found = holder.find_similar("new", vectors[1], k=10)
        assert {f.person_id for f in found} == {fresh}
        assert holder.index("new").count() == 2
    finally:
        holder.close()
        other.close()
    assert not _snapshot_hits(index_dir, erased)
