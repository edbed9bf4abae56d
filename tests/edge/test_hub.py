"""The server's edge hub on SQLite and on a real PostgreSQL (the gallery's store fixtures), with
synthetic embeddings: exactly-once ingestion (also under concurrent uploads of one batch),
audit events, snapshot sequences and contents that follow deletions, revocations and expiry."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.gallery.conftest import db_url, gallery  # noqa: F401  (store fixtures)
from tests.gallery.synthetic import MODEL, consented_person, near, unit_vectors
from visage.edge.events import DeviceDecision, DeviceInfo, EdgeEvent, EventWire
from visage.edge.snapshot import verify_snapshot
from visage.gallery import EmbeddingItem, Gallery
from visage.server.hub import EdgeHub
from visage.signing import generate_signing_key

DEVICE = DeviceInfo("dev-1", "0.1.0")
KEY = generate_signing_key()


@pytest.fixture
def hub(gallery: Gallery) -> EdgeHub:  # noqa: F811
    return EdgeHub(gallery, KEY)


def _people(g: Gallery, n: int = 3) -> tuple[list[str], np.ndarray]:
    vectors = unit_vectors(n, seed=5)
    ids = [consented_person(g, f"P{i}") for i in range(n)]
    g.enroll_many("people", [EmbeddingItem(p, v) for p, v in zip(ids, vectors)])
    return ids, vectors


def _event(
    key: str, vector: np.ndarray, decision: DeviceDecision | None = None
) -> EventWire:
    now = datetime.now(UTC)
    return EdgeEvent(key, DEVICE.id, 1, now, now, 4, 0.8, MODEL, vector, decision).to_wire()


def test_ingest_exactly_once_even_concurrently(hub: EdgeHub, gallery: Gallery) -> None:  # noqa: F811
    ids, vectors = _people(gallery)
    batch = [_event(f"k{i}", near(vectors[i % 3], 0.02, i), DeviceDecision(ids[i % 3], 0.2, 0.6, 1))
             for i in range(12)]
    answers: list[list[str]] = []

    def upload() -> None:
        receipts = hub.ingest(key_id="vk_a", collection="people", device=DEVICE, events=batch)
        answers.append([r.status for r in receipts])

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hub.events_stored("people") == 12
    assert sorted(answers) == [["duplicate"] * 12, ["duplicate"] * 12, ["stored"] * 12]
    audited = gallery.audit_events(collection="people", action="edge.identify", limit=100)
    assert len(audited) == 12 and {e.actor for e in audited} == {"vk_a"}
    # the same idempotency key from another key is another device's event
    other = hub.ingest(key_id="vk_b", collection="people", device=DEVICE, events=batch[:1])
    assert other[0].status == "stored"


def test_undecided_events_are_identified_on_the_server(hub: EdgeHub, gallery: Gallery) -> None:  # noqa: F811
    ids, vectors = _people(gallery)
    stranger = unit_vectors(1, seed=99)[0]
    receipts = hub.ingest(key_id="vk_a", collection="people", device=DEVICE, events=[
        _event("a", near(vectors[1], 0.02, 1)), _event("b", stranger)])
    assert [(r.status, r.person_id) for r in receipts] == [("stored", ids[1]), ("stored", None)]
    assert len(gallery.audit_events(collection="people", action="identify", limit=10)) == 2


def test_snapshot_sequence_follows_the_gallery(hub: EdgeHub, gallery: Gallery) -> None:  # noqa: F811
    ids, _ = _people(gallery)
    ends = datetime.now(UTC) + timedelta(days=3)
    gallery.grant_consent("people", ids[2], basis="consent", granted_by="x", expires_at=ends)

    def pull() -> tuple[int, dict[str, datetime | None]]:
        doc = hub.snapshot(key_id="vk_a", collection="people", device=DEVICE)
        snap = verify_snapshot(doc, KEY.public_key())
        return snap.sequence, {p.id: p.consent_expires_at for p in snap.persons}

    first, persons = pull()
    assert set(persons) == set(ids) and persons[ids[2]] is None  # an open-ended consent remains
    assert pull()[0] == first  # nothing changed: same sequence, fresh signature and expiry
    gallery.delete_person("people", ids[0])
    second, persons = pull()
    assert second > first and set(persons) == set(ids[1:])
    gallery.revoke_consent("people", ids[1])
    third, persons = pull()
    assert third > second and set(persons) == {ids[2]}
    (device,) = hub.devices()
    assert device.snapshot_sequence == third


def test_signing_key_found_or_made_beside_a_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VISAGE_EDGE_SIGNING_KEY", raising=False)
    with Gallery(tmp_path / "g.db") as g:
        hub = EdgeHub.open(g)
        again = EdgeHub.open(g)
    assert hub.public_key() == again.public_key()
    assert (tmp_path / "g.db.edge-signing-key.pem").exists()


def test_deletions_purge_edge_rows_in_the_same_transaction(hub: EdgeHub, gallery: Gallery) -> None:  # noqa: F811
    ids, vectors = _people(gallery)
    events = [_event(f"k{i}", near(vectors[i], 0.02, i)) for i in range(3)]
    receipts = hub.ingest(key_id="vk_a", collection="people", device=DEVICE, events=events)
    assert [r.person_id for r in receipts] == ids and hub.events_stored("people") == 3
    gallery.revoke_consent("people", ids[0])
    gallery.delete_person("people", ids[1])
    assert hub.events_stored("people") == 1
    hub.snapshot(key_id="vk_a", collection="people", device=DEVICE)
    assert len(hub.devices()) == 1
    gallery.delete_collection("people")
    gallery.create_collection("people", model_id=MODEL)
    assert hub.events_stored("people") == 0 and hub.devices() == []
    removed = [e.summary["edge_events_removed"] for e in gallery.audit_events(limit=100)
               if e.action in ("consent.revoke", "person.delete", "collection.delete")]
    assert removed == [1, 1, 1]


def test_migration_purges_what_earlier_deletions_left(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine, text

    from visage.store.engine import _migrations_config, migrate

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(_migrations_config(engine), "0003_edge")
    t = "2024-01-01 00:00:00.000000"
    event = ("INSERT INTO edge_event (key_id, event_key, collection, device_id, track, first_seen,"
             " last_seen, detections, quality, embedding_sha256, person_id, decided_by, crop,"
             f" audit_seq, received_at) VALUES ('k', :key, :coll, 'd', 1, '{t}', '{t}', 1, 0.9,"
             f" 'h', :person, 'device', :crop, 1, '{t}')")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO collection (id, name, model_id, dim, keep_images, version,"
                          f" created_at) VALUES (1, 'live', 'm', 128, 0, 0, '{t}')"))
        for person in ("revoked", "valid"):
            conn.execute(text("INSERT INTO person (id, collection_id, display_name, metadata,"
                              f" created_at) VALUES ('{person}', 1, 'x', '{{}}', '{t}')"))
            conn.execute(text("INSERT INTO consent (person_id, basis, granted_by, granted_at,"
                              f" revoked_at) VALUES ('{person}', 'consent', 'x', '{t}', "
                              + (f"'{t}')" if person == "revoked" else "NULL)")))
        for key, coll, person in (("gone", "deleted", None), ("rev", "live", "revoked"),
                                  ("valid", "live", "valid"), ("del", "live", "removed")):
            conn.execute(text(event), {"key": key, "coll": coll, "person": person, "crop": b"j"})
        conn.execute(text("INSERT INTO edge_device (key_id, device_id, collection, agent_version,"
                          f" first_seen_at, last_seen_at, events) VALUES ('k', 'd', 'deleted', 'v',"
                          f" '{t}', '{t}', 1)"))
        conn.execute(text("INSERT INTO edge_snapshot (collection, sequence, content_sha256,"
                          f" created_at) VALUES ('deleted', 3, 'h', '{t}')"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM edge_event WHERE crop IS NOT NULL")).one()[0] == 4
    migrate(engine)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT event_key, crop FROM edge_event")).all()
        others = conn.execute(text("SELECT (SELECT COUNT(*) FROM edge_device),"
                                   " (SELECT COUNT(*) FROM edge_snapshot)")).one()
    assert [tuple(r) for r in left] == [("valid", None)] and tuple(others) == (0, 0)
