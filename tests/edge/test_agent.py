"""The agent and the hub on a local store: offline decisions, durable delivery exactly once
(through the hub's own ingest, so a retried upload really reaches the deduplication in the
store), outages, crops only when enabled, bad events set aside, backoff."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.edge.conftest import COLLECTION, Person
from visage.edge.agent import Agent, AgentConfig
from visage.edge.events import DeviceDecision, DeviceInfo, EdgeEvent, EventWire, Receipt
from visage.edge.queue import EventQueue, QueueStats
from visage.edge.sync import Backoff, MemoryUplink, Syncer, UplinkRejected, UplinkUnavailable
from visage.edge.video import VideoSource
from visage.errors import StorageError
from visage.gallery import Gallery
from visage.pipeline import Pipeline
from visage.server.hub import EdgeHub
from visage.signing import generate_signing_key
from visage.store import EdgeEventRow, open_engine

DEVICE = DeviceInfo("dev-test", "0.1.0")
FAST = Backoff(base=0.01, cap=0.05)


@pytest.fixture
def hub(local_gallery: Gallery) -> EdgeHub:
    return EdgeHub(local_gallery, generate_signing_key())


def _uplink(hub: EdgeHub) -> MemoryUplink:
    return MemoryUplink(
        snapshot=hub.snapshot(key_id="vk_test", collection=COLLECTION, device=DEVICE),
        key=hub.public_key(),
    )


@dataclass
class _HubUplink:
    """The hub itself behind the uplink, as ``POST /v1/edge/events`` calls it: deduplication is
    the hub's, by idempotency key, in the store. The first ``lose_answers`` uploads are stored
    and then their answer is lost (the connection dropped after the commit), so the device
    sends the same events again; a store failure is what the server answers 503."""

    hub: EdgeHub
    lose_answers: int = 0
    uploads: int = 0

    def post_events(
        self, collection: str, device: DeviceInfo, events: Sequence[bytes], queue: QueueStats
    ) -> list[Receipt]:
        self.uploads += 1
        docs = [EventWire.model_validate_json(e) for e in events]
        try:
            receipts = self.hub.ingest(
                key_id="vk_test", collection=collection, device=device, events=docs
            )
        except StorageError as exc:
            raise UplinkUnavailable(f"503: {exc}") from None
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise UplinkUnavailable("the answer was lost after the hub stored the events")
        return receipts

    def fetch_snapshot(
        self, collection: str, device: DeviceInfo, *, ttl_s: int | None = None
    ) -> bytes:
        return self.hub.snapshot(
            key_id="vk_test", collection=collection, device=device, ttl_s=ttl_s
        )

    def public_key(self) -> str:
        return self.hub.public_key()


def _config(tmp_path: Path, *, drain_s: float = 5.0, send_crops: bool = False) -> AgentConfig:
    return AgentConfig(
        COLLECTION, tmp_path / "state", backoff=FAST, drain_s=drain_s, send_crops=send_crops
    )


def test_offline_identification_delivered_exactly_once(
    tmp_path: Path,
    hub: EdgeHub,
    local_gallery: Gallery,
    edge_pipeline: Pipeline,
    two_people_video: Path,
    walkers: tuple[Person, Person],
) -> None:
    """Every upload's answer is lost twice after the hub stored it; the device sends the same
    events again and the hub answers ``duplicate``: two tracks, two stored events, each
    audited once as an edge decision."""
    uplink = _HubUplink(hub, lose_answers=2)
    with Agent(_config(tmp_path, drain_s=20.0), edge_pipeline, uplink) as agent:
        assert agent.snapshot is None
        report = agent.run(VideoSource(two_people_video, every=2))
        assert agent.snapshot is not None and agent.snapshot.collection == COLLECTION
    assert report.tracks == 2 and report.identified == 2
    assert report.queue.pending == 0 and uplink.lose_answers == 0  # both answers were lost ...
    assert report.sync.failed == 2 and report.sync.duplicates >= 1  # ... and the events resent
    assert hub.events_stored(COLLECTION) == 2
    audited = [
        e.summary["event"]
        for e in local_gallery.audit_events(collection=COLLECTION, limit=1000)
        if e.action == "edge.identify"
    ]
    assert len(audited) == len(set(audited)) == 2
    (device,) = hub.devices()
    assert device.events == 2
    engine = open_engine(local_gallery.url)
    with Session(engine) as session:  # the stored rows, not the receipts
        rows = session.scalars(select(EdgeEventRow).order_by(EdgeEventRow.first_seen)).all()
    engine.dispose()
    for row, person in zip(rows, walkers, strict=True):
        assert row.person_id is not None and row.decided_by == "device"
        assert local_gallery.person(COLLECTION, row.person_id).external_id == person.name
        assert row.crop is None  # no image leaves the device by default


def test_outage_then_recovery(
    tmp_path: Path, hub: EdgeHub, edge_pipeline: Pipeline, two_people_video: Path
) -> None:
    uplink = _uplink(hub)
    uplink.down = True
    config = _config(tmp_path, drain_s=0.3)
    with Agent(config, edge_pipeline, uplink) as agent:
        report = agent.run(VideoSource(two_people_video, every=3))
    assert report.tracks == 2 and report.queue.pending == 2 and report.identified == 0
    assert not uplink.stored
    uplink.down = False
    with Agent(config, None, uplink) as agent:  # a later run: sync only
        report = agent.run(None)
    assert report.queue.pending == 0 and len(uplink.stored) == 2
    assert all(e.decision is None for e in uplink.stored.values())  # the server will identify


def test_crops_only_when_the_operator_enables_them(
    tmp_path: Path, hub: EdgeHub, edge_pipeline: Pipeline, two_people_video: Path
) -> None:
    uplink = _uplink(hub)
    with Agent(_config(tmp_path, send_crops=True), edge_pipeline, uplink) as agent:
        agent.run(VideoSource(two_people_video, every=3))
    crops = [e.crop_jpeg for e in uplink.stored.values()]
    assert len(crops) == 2 and all(c is not None for c in crops)
    assert Image.open(io.BytesIO(crops[0])).size == (150, 150)  # type: ignore[arg-type]


class _Poisoned(MemoryUplink):
    """Refuses any request whose batch holds the key ``bad`` (as a server answering 422)."""

    def post_events(
        self, collection: str, device: DeviceInfo, events: Sequence[bytes], queue: QueueStats
    ) -> list[Receipt]:
        if any(json.loads(e)["key"] == "bad" for e in events):
            raise UplinkRejected("422: malformed")
        return [Receipt(json.loads(e)["key"], "stored") for e in events]


def test_a_bad_event_is_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    with EventQueue(tmp_path / "q.db") as queue:
        for key in ["a", "b", "bad", "c", "d"]:
            queue.put(key, json.dumps({"key": key}).encode())
        syncer = Syncer(queue, _Poisoned(), COLLECTION, DEVICE, batch_size=10)
        assert syncer.sync_once() == 5
        assert queue.stats().pending == 0 and [k for k, _ in queue.dead()] == ["bad"]
        assert syncer.report().delivered == 4


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff, rng = Backoff(base=1.0, cap=8.0), random.Random(3)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [backoff.delay(failures, rng) for _ in range(400)]
        assert 0.0 <= min(delays) < ceiling * 0.1 and ceiling * 0.9 < max(delays) <= ceiling
    assert backoff.delay(1, rng, at_least=30.0) == 30.0  # the server's Retry-After wins


def _event(
    key: str, track: int, vector: np.ndarray, decision: DeviceDecision | None = None
) -> EdgeEvent:
    now = datetime.now(UTC)
    return EdgeEvent(key, DEVICE.id, track, now, now, 3, 0.9, "dlib_resnet_v1", vector, decision)


def test_hub_stores_once_audits_and_registers(
    hub: EdgeHub, local_gallery: Gallery, enrollment: dict[str, list[np.ndarray]]
) -> None:
    name, vectors = next(iter(enrollment.items()))
    person = local_gallery.person(COLLECTION, name)
    decided = _event("e1", 1, vectors[0], DeviceDecision(person.id, 0.2, 0.6, 1))
    undecided = _event("e2", 2, vectors[1])
    stale = _event("e4", 4, vectors[0], DeviceDecision("f" * 32, 0.2, 0.6, 1))  # gone from server
    docs = [
        decided.to_wire(),
        undecided.to_wire(),
        decided.to_wire().model_copy(update={"key": "e3", "embedding": "!!"}),
        stale.to_wire(),
        decided.to_wire(),
    ]
    first = hub.ingest(key_id="vk_test", collection=COLLECTION, device=DEVICE, events=docs)
    assert [r.status for r in first] == ["stored", "stored", "rejected", "stored", "duplicate"]
    assert first[1].person_id == person.id  # no device decision: identified on the server
    assert first[3].person_id == person.id  # a stale device decision: re-identified
    again = hub.ingest(key_id="vk_test", collection=COLLECTION, device=DEVICE, events=docs[:2])
    assert [r.status for r in again] == ["duplicate", "duplicate"]
    assert [r.person_id for r in again] == [person.id, person.id]
    assert hub.events_stored(COLLECTION) == 3
    actions = [e.action for e in local_gallery.audit_events(collection=COLLECTION, limit=1000)]
    # the claim of e1 verified, e2 and the stale e4 identified; both decisions audited as edge
    assert actions.count("verify") == 1 and actions.count("identify") == 2
    assert actions.count("edge.identify") == 2
    (device,) = hub.devices()
    assert (device.device_id, device.events, device.agent_version) == (DEVICE.id, 3, "0.1.0")
