"""Issue 11 over HTTP, as the attacker did it: a device key posting edge events to a real server.

Crops are kept only in a ``keep_images`` collection, only for an identified, consented person,
and only when they are a 150x150 JPEG chip; deleting a person, revoking their consent or
deleting the collection purges their edge rows in the same transaction (audited), and a
re-created collection inherits none. A device's claimed person and distance are re-scored by
the server, which stores its own figures and flags a mismatch. Every check reads the store.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from visage.align import align
from visage.api import pipeline
from visage.edge.snapshot import OfflineGallery, verify_snapshot
from visage.imageio import decode
from visage.pipeline import nearest_centre
from visage.signing import parse_public_key

from .conftest import Server
from .test_photos import enroll_people

DEVICE = "door-1"


@dataclass(frozen=True)
class Probe:
    """What a device sends for one track: the embedding and the aligned chip as JPEG."""

    embedding: np.ndarray
    chip_jpeg: bytes


def probe_of(photo: Path) -> Probe:
    image = decode(photo.read_bytes())
    face = nearest_centre(pipeline().embed(image), image.shape[1], image.shape[0])
    assert face.embedding is not None
    out = io.BytesIO()
    PILImage.fromarray(align(image, face.landmarks)).save(out, format="JPEG", quality=85)
    return Probe(face.embedding, out.getvalue())


@pytest.fixture(scope="module")
def people(people_photos: list[Path]) -> dict[str, list[Path]]:
    """Two people with five photos each: three to enroll, the fourth is the device's probe."""
    by_name: dict[str, list[Path]] = {}
    for path in people_photos:
        by_name.setdefault(path.parent.name, []).append(path)
    chosen = sorted(name for name, paths in by_name.items() if len(paths) >= 5)[:2]
    return {name: sorted(by_name[name])[:5] for name in chosen}


@pytest.fixture(scope="module")
def probes(people: dict[str, list[Path]], distractor_photos: list[Path]) -> dict[str, Probe]:
    found = {name: probe_of(paths[3]) for name, paths in people.items()}
    found["stranger"] = probe_of(distractor_photos[0])
    return found


def new_collection(server: Server, *, keep_images: bool, name: str | None = None) -> str:
    name = name or f"e-{uuid.uuid4().hex[:10]}"
    with server.client(server.admin) as client:
        made = client.post("/v1/collections", json={"name": name, "keep_images": keep_images})
        assert made.status_code == 201, made.text
    return name


def event(key: str, embedding: np.ndarray, *, crop: bytes | None = None,
          decision: dict[str, Any] | None = None) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "key": key, "device": DEVICE, "track": 1, "first_seen": now, "last_seen": now,
        "detections": 5, "quality": 0.9, "model_id": pipeline().model_id,
        "embedding": base64.b64encode(np.asarray(embedding, "<f4").tobytes()).decode("ascii"),
        "decision": decision,
        "crop_jpeg": None if crop is None else base64.b64encode(crop).decode("ascii"),
    }


def post(server: Server, token: str, collection: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    with server.client(token) as client:
        answer = client.post(
            "/v1/edge/events", params={"collection": collection},
            json={"device": {"id": DEVICE, "agent_version": "test"}, "events": list(events)},
        )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["receipts"])


def rows(server: Server, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.db) as conn:
        return conn.execute(sql, args).fetchall()


def stored(server: Server, collection: str) -> dict[str, tuple[Any, ...]]:
    """event key -> (person id, distance, decided by, crop) as the store holds it."""
    found = rows(server, "SELECT event_key, person_id, distance, decided_by, crop FROM edge_event"
                 " WHERE collection = ?", collection)
    return {r[0]: r[1:] for r in found}


def audited(server: Server, collection: str, action: str) -> list[dict[str, Any]]:
    found = rows(server, "SELECT summary FROM audit_event WHERE collection = ? AND action = ?"
                 " ORDER BY seq", collection, action)
    return [json.loads(s) for (s,) in found]


def test_crops_only_for_consented_persons_in_collections_that_keep_images(
    server: Server, people: dict[str, list[Path]], probes: dict[str, Probe]
) -> None:
    name = next(iter(people))
    kept, plain = new_collection(server, keep_images=True), new_collection(server, keep_images=False)
    ids: dict[str, dict[str, str]] = {}
    for coll in (kept, plain):
        with server.client(server.admin) as client:
            ids[coll] = enroll_people(client, coll, {name: people[name]})
    mine, stranger = probes[name], probes["stranger"]
    for coll in (kept, plain):
        token = server.key(["device"], [coll])
        receipts = post(server, token, coll,
                        event("known", mine.embedding, crop=mine.chip_jpeg),
                        event("unknown", stranger.embedding, crop=stranger.chip_jpeg))
        assert [(r["status"], r["person_id"]) for r in receipts] == [
            ("stored", ids[coll][name]), ("stored", None)]
    # positive control: the chip of an identified, consented person is kept where images are
    assert stored(server, kept)["known"][3] == mine.chip_jpeg
    assert stored(server, kept)["unknown"][3] is None  # nobody identified: no crop
    assert stored(server, plain)["known"][3] is None  # the collection keeps no images
    assert stored(server, plain)["unknown"][3] is None
    # the attack: a whole photo, and bytes that are no JPEG at all, as the "crop"
    token = server.key(["device"], [kept])
    photo = people[name][4].read_bytes()
    png = io.BytesIO()
    PILImage.new("RGB", (150, 150)).save(png, format="PNG")
    receipts = post(server, token, kept,
                    event("photo", mine.embedding, crop=photo),
                    event("png", mine.embedding, crop=png.getvalue()),
                    event("junk", mine.embedding, crop=b"\xff\xd8\xff" + b"x" * 500))
    assert [r["status"] for r in receipts] == ["rejected"] * 3
    assert "pixels" in receipts[0]["reason"] or "150x150" in receipts[0]["reason"], receipts[0]
    assert "not a JPEG" in receipts[1]["reason"]
    assert set(stored(server, kept)) == {"known", "unknown"}


def test_deletions_purge_edge_rows_and_a_recreated_collection_inherits_none(
    server: Server, people: dict[str, list[Path]], probes: dict[str, Probe]
) -> None:
    coll = new_collection(server, keep_images=True)
    with server.client(server.admin) as client:
        ids = enroll_people(client, coll, people)
    first, second = people
    token = server.key(["device"], [coll])

    def sightings(prefix: str) -> None:
        receipts = post(server, token, coll, *(
            event(f"{prefix}-{n}", probes[n].embedding, crop=probes[n].chip_jpeg) for n in people))
        assert [r["person_id"] for r in receipts] == [ids[n] for n in people]

    sightings("a")
    held = stored(server, coll)
    assert {held[f"a-{n}"][0] for n in people} == set(ids.values())  # positive control
    assert all(held[f"a-{n}"][3] for n in people)  # crops kept (keep_images, consented)
    with server.client(server.admin) as client:
        assert client.post(f"/v1/collections/{coll}/persons/{ids[first]}/consents/revoke",
                           json={"reason": "asked"}).status_code == 200
        assert set(stored(server, coll)) == {f"a-{second}"}
        assert client.delete(f"/v1/collections/{coll}/persons/{ids[second]}").status_code == 200
    assert stored(server, coll) == {}
    assert audited(server, coll, "consent.revoke")[-1]["edge_events_removed"] == 1
    assert audited(server, coll, "person.delete")[-1]["edge_events_removed"] == 1
    assert rows(server, "SELECT COUNT(*) FROM edge_event WHERE person_id IN (?, ?)",
                *ids.values()) == [(0,)]

    # a fresh enrolment, sightings and a snapshot pull, then the collection goes
    with server.client(server.admin) as client:
        ids = enroll_people(client, coll, {second: people[second]})
    sightings_before = post(server, token, coll, event("b", probes[second].embedding))
    assert sightings_before[0]["person_id"] == ids[second]
    with server.client(token) as client:
        pulled = client.get("/v1/edge/snapshot", params={"collection": coll, "device": DEVICE})
        assert pulled.status_code == 200, pulled.text
        trusted = parse_public_key(client.get("/v1/edge/public-key").json()["key"])
    old_sequence = verify_snapshot(pulled.content, trusted).sequence
    (old_id,) = rows(server, "SELECT id FROM collection WHERE name = ?", coll)[0]
    edge_rows = ("SELECT (SELECT COUNT(*) FROM edge_event WHERE collection = ?),"
                 " (SELECT COUNT(*) FROM edge_device WHERE collection = ?),"
                 " (SELECT COUNT(*) FROM edge_snapshot WHERE collection = ?)")
    assert rows(server, edge_rows, coll, coll, coll) == [(1, 1, 1)]  # positive control
    with server.client(server.admin) as client:
        assert client.delete(f"/v1/collections/{coll}").status_code == 200
        assert rows(server, edge_rows, coll, coll, coll) == [(0, 0, 0)]
        assert audited(server, coll, "collection.delete")[-1]["edge_events_removed"] == 1

        # re-created under the same name (SQLite may even hand it the same id): nothing inherited
        new_collection(server, keep_images=True, name=coll)
        (new_id,) = rows(server, "SELECT id FROM collection WHERE name = ?", coll)[0]
        assert rows(server, edge_rows, coll, coll, coll) == [(0, 0, 0)], (old_id, new_id)
        devices = client.get("/v1/edge/devices").json()["items"]
        assert [d for d in devices if d["collection"] == coll] == []
    with server.client(token) as client:
        pulled = client.get("/v1/edge/snapshot", params={"collection": coll, "device": DEVICE})
    fresh = verify_snapshot(pulled.content, trusted, min_sequence=old_sequence)
    assert fresh.sequence > old_sequence and fresh.persons == ()  # the old snapshot can't replay


def test_a_forged_sighting_is_rescored_and_flagged(
    server: Server, people: dict[str, list[Path]], probes: dict[str, Probe]
) -> None:
    name = next(iter(people))
    coll = new_collection(server, keep_images=False)
    with server.client(server.admin) as client:
        ids = enroll_people(client, coll, {name: people[name]})
    token = server.key(["device"], [coll])
    with server.client(token) as client:
        pulled = client.get("/v1/edge/snapshot", params={"collection": coll, "device": DEVICE})
        trusted = parse_public_key(client.get("/v1/edge/public-key").json()["key"])
    snapshot = verify_snapshot(pulled.content, trusted)
    # positive control: what an honest device decides from its snapshot is accepted as is
    honest = OfflineGallery(snapshot).identify(probes[name].embedding, k=1)
    assert not honest.unknown and honest.candidates[0].person_id == ids[name]
    claim = {"person_id": ids[name], "distance": round(honest.candidates[0].distance, 6),
             "threshold": honest.threshold, "snapshot": snapshot.sequence}
    random = np.random.default_rng(11).standard_normal(128).astype(np.float32)
    random /= np.linalg.norm(random)
    forged = {**claim, "distance": 0.01}
    receipts = post(server, token, coll,
                    event("honest", probes[name].embedding, decision=claim),
                    event("random", random, decision=forged),
                    event("closer", probes[name].embedding, decision=forged))
    assert [r["person_id"] for r in receipts] == [ids[name], None, ids[name]]
    held = stored(server, coll)
    assert held["honest"][:3] == (ids[name], pytest.approx(claim["distance"], abs=1e-5), "device")
    assert held["random"][0] is None and held["random"][2] == "server"
    assert held["random"][1] is not None and held["random"][1] > honest.threshold
    assert held["closer"][0] == ids[name] and held["closer"][1] == pytest.approx(
        claim["distance"], abs=1e-5)  # the server's distance, not the claimed 0.01
    by_event = {s["event"]: s for s in audited(server, coll, "edge.identify")}
    assert by_event["honest"]["mismatch"] is False
    for key in ("random", "closer"):
        flagged = by_event[key]
        assert flagged["mismatch"] is True and flagged["device_distance"] == 0.01
        assert flagged["device_person"] == ids[name] and flagged["distance"] != 0.01
    assert by_event["random"]["person"] is None
    with server.client(server.admin) as client:
        log = client.get("/v1/audit", params={"collection": coll, "action": "verify"})
    assert log.status_code == 200 and len(log.json()["items"]) == 3  # every claim re-scored

