"""Faults against a real server process (``visage serve`` on a free loopback port):

- the server is down while events are produced → all delivered once it is up;
- a TCP proxy cuts connections in the middle of uploads → nothing lost, nothing duplicated;
- the agent is killed with SIGKILL and restarted → the queue is intact, delivery resumes;
- a tampered or expired snapshot is refused (and an expired one deleted);
- an impostor's first answer (its own key, a garbage or foreign document) pins nothing;
- a person deleted on the server stops being identified on the device after the next pull.

The store is seeded (collection, consented persons, templates, a device key) before the server
starts, as an operator would with the CLI; the agent reaches the server only through
:class:`~tests.edge.proxy.Proxy`, so "server down" means nothing listening on its port.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.edge.conftest import COLLECTION, Person
from tests.edge.proxy import Impostor, Proxy
from tests.server.conftest import Server, start_server, stop_server
from visage.cli import app
from visage.edge.agent import SNAPSHOT_FILE, Agent, AgentConfig
from visage.edge.events import DeviceDecision, DeviceInfo, EdgeEvent
from visage.edge.queue import EventQueue
from visage.edge.snapshot import SnapshotRefused, verify_snapshot
from visage.edge.sync import Backoff, HttpUplink, Syncer, drain
from visage.edge.video import VideoSource
from visage.gallery import EmbeddingItem, Gallery
from visage.pipeline import Pipeline
from visage.server.keys_store import KeyStore
from visage.signing import generate_signing_key, parse_public_key, public_key_text
from visage.store import Store, database_url

FAST = Backoff(base=0.05, cap=0.5)
Enrollment = dict[str, list[np.ndarray]]


@dataclass(frozen=True)
class Seeded:
    """A store ready for a server: person ids by name and a device key's token."""

    folder: Path
    persons: dict[str, str]
    device_key: str

    @property
    def db(self) -> Path:
        return self.folder / "gallery.db"


def seed(folder: Path, enrollment: Enrollment) -> Seeded:
    """Collection, consented persons with templates, and a device key, written to the store."""
    folder.mkdir(parents=True, exist_ok=True)
    with Gallery(folder / "gallery.db") as gallery:
        gallery.create_collection(COLLECTION, model_id="dlib_resnet_v1")
        ids = {}
        for name, vectors in enrollment.items():
            person = gallery.add_person(COLLECTION, name.replace("_", " "), external_id=name)
            gallery.grant_consent(COLLECTION, person.id, basis="consent", granted_by="test")
            gallery.enroll_many(COLLECTION, [EmbeddingItem(person.id, v) for v in vectors])
            ids[name] = person.id
    keys = KeyStore(Store.open(database_url(folder / "gallery.db")))
    token = keys.create("door", scopes=["device"], collections=[COLLECTION]).token
    return Seeded(folder, ids, token)


def stored_events(db: Path) -> list[tuple[str, str | None, str]]:
    """``(event key, person id, decided by)`` of every event the server stored."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT event_key, person_id, decided_by FROM edge_event").fetchall()


def audit_actions(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [a for (a,) in conn.execute("SELECT action FROM audit_event ORDER BY seq")]


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, enrollment: Enrollment
) -> Iterator[tuple[Server, Seeded]]:
    seeded = seed(tmp_path_factory.mktemp("edge-server"), enrollment)
    server = start_server(seeded.folder)
    yield server, seeded
    stop_server(server)
    tracebacks = [line for line in server.log_tail(100_000).splitlines() if "Traceback" in line]
    assert not tracebacks, server.log_tail()


def _config(state: Path, **kw: object) -> AgentConfig:
    return AgentConfig(COLLECTION, state, backoff=FAST, **kw)  # type: ignore[arg-type]


def test_server_down_while_events_are_produced(
    tmp_path: Path,
    enrollment: Enrollment,
    edge_pipeline: Pipeline,
    two_people_video: Path,
    walkers: tuple[Person, Person],
) -> None:
    seeded = seed(tmp_path / "server", enrollment)
    proxy = Proxy()  # not started: nothing listens where the agent sends
    uplink = HttpUplink(proxy.url, seeded.device_key, timeout=10)
    state = tmp_path / "agent"
    with Agent(_config(state, drain_s=1.0), edge_pipeline, uplink) as agent:
        report = agent.run(VideoSource(two_people_video, every=3))
    assert report.tracks == 2 and report.queue.pending == 2 and report.sync.failed >= 1
    server = start_server(seeded.folder)
    try:
        proxy.start(_port(server))
        with Agent(_config(state, drain_s=60.0), None, uplink) as agent:
            report = agent.run(None)
        assert report.queue.pending == 0
        events = stored_events(seeded.db)
        assert len(events) == 2
        names = {seeded.persons[p.name] for p in walkers}
        assert {person for _, person, _ in events} == names  # identified by the server
        assert {by for _, _, by in events} == {"server"}
        assert audit_actions(seeded.db).count("identify") == 2
    finally:
        proxy.stop()
        stop_server(server)


def _events(n: int, device: str, vectors: list[np.ndarray], person: str) -> list[EdgeEvent]:
    now = datetime.now(UTC)
    return [
        EdgeEvent(
            uuid.uuid4().hex,
            device,
            i,
            now,
            now,
            5,
            0.9,
            "dlib_resnet_v1",
            vectors[i % len(vectors)],
            DeviceDecision(person, 0.3, 0.6, 1),
        )
        for i in range(n)
    ]


def test_connections_cut_mid_upload_lose_and_duplicate_nothing(
    running: tuple[Server, Seeded], tmp_path: Path, enrollment: Enrollment
) -> None:
    server, seeded = running
    name, vectors = next(iter(enrollment.items()))
    cycle = ["cut-response", "cut-request", "pass", "cut-response", "pass"]
    proxy = Proxy(_port(server), plan=lambda n: cycle[n % len(cycle)], cut_bytes=300)
    proxy.start()
    fresh = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    uplink = HttpUplink(
        proxy.url, seeded.device_key, timeout=10, transport=fresh
    )  # a connection per upload
    device = DeviceInfo("dev-cuts", "test")
    events = _events(24, device.id, vectors, seeded.persons[name])
    try:
        with EventQueue(tmp_path / "queue.db") as queue:
            for event in events:
                queue.put(event.key, event.to_bytes())
            syncer = Syncer(queue, uplink, COLLECTION, device, batch_size=4, backoff=FAST)
            report = drain(syncer, timeout_s=120)
    finally:
        proxy.stop()
        uplink.close()
    assert report.pending == 0 and report.failed >= 4
    assert report.duplicates >= 1  # some batches were stored before their answer was cut
    assert {"cut-request", "cut-response"} <= set(proxy.cuts)
    keys = [k for k, _, _ in stored_events(seeded.db) if k in {e.key for e in events}]
    assert sorted(keys) == sorted(e.key for e in events)  # each exactly once
    with sqlite3.connect(seeded.db) as conn:
        audited = [
            json.loads(s)["event"]
            for (s,) in conn.execute(
                "SELECT summary FROM audit_event WHERE action = 'edge.identify'"
            )
        ]
    assert sorted(k for k in audited if k in set(keys)) == sorted(keys)  # audited once each


def test_agent_killed_and_restarted(
    tmp_path: Path, enrollment: Enrollment, two_people_video: Path
) -> None:
    seeded = seed(tmp_path / "server", enrollment)
    proxy = Proxy()
    state = tmp_path / "agent"
    command = [
        sys.executable,
        "-m",
        "visage",
        "edge",
        "run",
        "--server",
        proxy.url,
        "--key",
        seeded.device_key,
        "--collection",
        COLLECTION,
        "--state",
        str(state),
        "--drain",
        "600",
    ]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [*command, "--source", str(two_people_video), "--every", "3"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        pending = 0
        while time.monotonic() < deadline and pending < 2:
            time.sleep(0.2)
            if (state / "queue.db").exists():
                with sqlite3.connect(f"file:{state / 'queue.db'}?mode=ro", uri=True) as conn:
                    try:
                        pending = conn.execute("SELECT COUNT(*) FROM event").fetchone()[0]
                    except sqlite3.OperationalError:
                        pending = 0
        assert pending == 2, (tmp_path / "agent.log").read_text()
        assert agent.poll() is None  # still trying to upload to a server that is down
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    with EventQueue(state / "queue.db") as queue:
        assert queue.stats().pending == 2  # nothing lost to the kill
    server = start_server(seeded.folder)
    try:
        proxy.start(_port(server))
        done = subprocess.run(
            [*command, "--drain", "60", "--json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["pending"] == 0 and report["delivered"] == 2
        assert len(stored_events(seeded.db)) == 2
    finally:
        proxy.stop()
        stop_server(server)


def test_tampered_or_expired_snapshot_refused(
    running: tuple[Server, Seeded], tmp_path: Path
) -> None:
    server, seeded = running
    uplink = HttpUplink(server.url, seeded.device_key)
    trusted = parse_public_key(uplink.public_key())
    with Agent(_config(tmp_path / "agent", snapshot_ttl_s=2), None, uplink) as agent:
        good = agent.pull_snapshot()
        document = (tmp_path / "agent" / SNAPSHOT_FILE).read_bytes()
    doc = json.loads(document)
    payload = bytearray(base64.b64decode(doc["payload"]))
    at = payload.find(b'"display_name":"') + len(b'"display_name":"')
    payload[at] ^= 0x20  # one letter of a name changes case
    doc["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(SnapshotRefused, match="bad signature"):
        verify_snapshot(json.dumps(doc).encode(), trusted)
    time.sleep(max(0.0, (good.expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    with pytest.raises(SnapshotRefused, match="expired"):
        verify_snapshot(document, trusted)
    with Agent(_config(tmp_path / "agent"), None, uplink) as agent:
        assert agent.snapshot is None  # the saved one has expired: not used ...
    assert not (tmp_path / "agent" / SNAPSHOT_FILE).exists()  # ... and is deleted
    uplink.close()


@pytest.mark.parametrize("answer", ["garbage", "the server's own document"])
def test_trust_on_first_use_pins_only_a_key_a_snapshot_verified_under(
    running: tuple[Server, Seeded], tmp_path: Path, answer: str
) -> None:
    """A machine in the middle answers the device's first pull with its own key and a document
    that does not verify under it; once the link reaches the real server, the pull succeeds
    and pins the server's key (before the fix, the impostor's key was pinned and every later
    legitimate pull was refused as "bad signature")."""
    server, seeded = running
    direct = HttpUplink(server.url, seeded.device_key)
    genuine = direct.fetch_snapshot(COLLECTION, DeviceInfo("dev-direct", "test"))
    server_key = direct.public_key()
    direct.close()
    impostor = Impostor(
        public_key_text(generate_signing_key().public_key()),
        b'{"payload": "garbage"}' if answer == "garbage" else genuine,
    )
    proxy = Proxy(impostor.port)
    proxy.start()
    fresh = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    uplink = HttpUplink(proxy.url, seeded.device_key, transport=fresh)  # a connection per call
    state = tmp_path / "agent"
    try:
        with Agent(_config(state), None, uplink) as agent:
            refused = "not a signed snapshot" if answer == "garbage" else "bad signature"
            with pytest.raises(SnapshotRefused, match=refused):
                agent.pull_snapshot()
            assert agent.queue.get_meta("trusted_key") is None  # nothing pinned
        assert impostor.requests == 2 and not (state / SNAPSHOT_FILE).exists()
        proxy.target = _port(server)  # the link reaches the real server again
        with Agent(_config(state), None, uplink) as agent:
            snapshot = agent.pull_snapshot()
            assert agent.queue.get_meta("trusted_key") == server_key
        assert snapshot.collection == COLLECTION and len(snapshot.persons) == len(seeded.persons)
    finally:
        proxy.stop()
        impostor.stop()
        uplink.close()


def own_collection(server: Server, enrollment: Enrollment) -> tuple[str, dict[str, str], str]:
    """A new collection holding ``enrollment``, for a test that changes it (the module's
    :data:`COLLECTION` stays as seeded, whatever the order of tests): name, ids, device key."""
    name = f"edge-{uuid.uuid4().hex[:8]}"
    ids = {}
    with server.client(server.admin) as client:
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
        for person, vectors in enrollment.items():
            made = client.post(f"/v1/collections/{name}/persons", json={"display_name": person})
            pid = made.json()["id"]
            base = f"/v1/collections/{name}/persons/{pid}"
            assert client.post(f"{base}/consents", json={"basis": "consent", "granted_by": "t"}
                               ).status_code == 201
            for vector in vectors:
                enrolled = client.post(f"{base}/faces", json={"embedding": vector.tolist()})
                assert enrolled.status_code == 201, enrolled.text
            ids[person] = pid
    return name, ids, server.key(["device"], [name])


def test_person_deleted_on_server_vanishes_after_next_pull(
    running: tuple[Server, Seeded], tmp_path: Path, enrollment: Enrollment
) -> None:
    server, _ = running
    collection, persons, device_key = own_collection(server, enrollment)
    name, vectors = list(enrollment.items())[-1]
    person = persons[name]
    uplink = HttpUplink(server.url, device_key)
    config = AgentConfig(collection, tmp_path / "agent", backoff=FAST)
    with Agent(config, None, uplink) as agent:
        first = agent.pull_snapshot()
        decision = agent.decide(vectors[0])
        assert decision is not None and decision.person_id == person
        old = (tmp_path / "agent" / SNAPSHOT_FILE).read_bytes()
        with server.client(server.key(["enroll"])) as client:
            response = client.delete(f"/v1/collections/{collection}/persons/{person}")
            assert response.status_code == 200, response.text
        second = agent.pull_snapshot()
        assert second.sequence > first.sequence
        assert person not in {p.id for p in second.persons}
        decision = agent.decide(vectors[0])
        assert decision is not None and decision.person_id != person
        with pytest.raises(SnapshotRefused, match="replay"):  # the old one cannot come back
            verify_snapshot(
                old, parse_public_key(uplink.public_key()), min_sequence=second.sequence
            )
    with server.client(server.admin) as client:
        devices = client.get("/v1/edge/devices").json()["items"]
    mine = [d for d in devices if d["device_id"] == agent.device.id]
    assert mine and mine[0]["snapshot_sequence"] == second.sequence and mine[0]["agent_version"]
    uplink.close()


def test_device_keys_only_report_and_pull_for_their_collections(
    running: tuple[Server, Seeded],
) -> None:
    server, seeded = running
    with server.client(seeded.device_key) as client:
        assert client.get("/v1/edge/public-key").status_code == 200
        assert (
            client.get(
                "/v1/edge/snapshot", params={"collection": COLLECTION, "device": "dev-scope"}
            ).status_code
            == 200
        )
        other = client.get(
            "/v1/edge/snapshot", params={"collection": "other", "device": "dev-scope"}
        )
        assert other.status_code == 403
        refused = [
            client.post(
                f"/v1/collections/{COLLECTION}/identify",
                params={"purpose": "x"},
                json={"embeddings": [[0.1] * 128]},
            ),
            client.get(f"/v1/collections/{COLLECTION}/persons"),
            client.get("/v1/edge/devices"),
            client.get("/v1/audit", params={"collection": COLLECTION}),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403, 403]


def test_cli_pull_then_status(running: tuple[Server, Seeded], tmp_path: Path) -> None:
    server, seeded = running
    state = str(tmp_path / "agent")
    with server.client(seeded.device_key) as client:
        key = client.get("/v1/edge/public-key").json()["key"]
    pulled = CliRunner().invoke(app, ["edge", "pull", "--server", server.url, "--key",
                                      seeded.device_key, "--collection", COLLECTION,
                                      "--state", state, "--trust", key, "--json"])
    assert pulled.exit_code == 0, pulled.output
    snap = json.loads(pulled.stdout)
    assert snap["sequence"] >= 1 and snap["persons"] == len(seeded.persons)
    status = CliRunner().invoke(app, ["edge", "status", "--state", state, "--json"])
    doc = json.loads(status.stdout)
    assert doc["snapshot_sequence"] == str(snap["sequence"]) and doc["trusted_key"] == key
    wrong = CliRunner().invoke(app, ["edge", "pull", "--server", server.url, "--key",
                                     seeded.device_key, "--collection", COLLECTION, "--state",
                                     str(tmp_path / "other"), "--trust",
                                     "ed25519:" + "A" * 43 + "="])
    assert wrong.exit_code == 1 and "bad signature" in wrong.stderr
