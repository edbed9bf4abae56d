"""What an edge device keeps (issue 18, item 4), each replaying the attack on a real agent
folder: files another local user could read, strangers' embeddings queued while the link is
down, dead events kept forever, an expired snapshot left on disk, an invalid device id."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.edge.conftest import COLLECTION, Person
from visage.edge.agent import QUEUE_FILE, SNAPSHOT_FILE, Agent, AgentConfig
from visage.edge.events import DeviceInfo
from visage.edge.queue import EventQueue, QueueLimits
from visage.edge.sync import Backoff, MemoryUplink
from visage.edge.video import VideoSource
from visage.errors import InputError
from visage.gallery import Gallery
from visage.pipeline import Pipeline
from visage.server.hub import EdgeHub
from visage.signing import generate_signing_key

DEVICE = DeviceInfo("dev-test", "0.1.0")
FAST = Backoff(base=0.01, cap=0.05)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if p.is_file())


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask 022, under which plain ``open`` makes files 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def hub(local_gallery: Gallery) -> EdgeHub:
    return EdgeHub(local_gallery, generate_signing_key())


def _uplink(hub: EdgeHub, *, ttl_s: int | None = None) -> MemoryUplink:
    return MemoryUplink(
        snapshot=hub.snapshot(key_id="vk_test", collection=COLLECTION, device=DEVICE, ttl_s=ttl_s),
        key=hub.public_key(),
    )


def _config(state: Path, **kw: object) -> AgentConfig:
    return AgentConfig(COLLECTION, state, backoff=FAST, **kw)  # type: ignore[arg-type]


@pytest.mark.usefixtures("loose_umask")
def test_agent_folder_and_files_are_owner_only_and_loose_ones_tightened(
    tmp_path: Path, hub: EdgeHub
) -> None:
    state = tmp_path / "home" / "edge"  # two folders the agent must create
    with Agent(_config(state), None, _uplink(hub)) as agent:
        agent.pull_snapshot()
        names = {p.name for p in _files(state)}
        assert {QUEUE_FILE, QUEUE_FILE + "-wal", QUEUE_FILE + "-shm", SNAPSHOT_FILE} <= names
        assert {_mode(p) for p in _files(state)} == {0o600}, {
            p.name: oct(_mode(p)) for p in _files(state)
        }
    assert _mode(state) == _mode(state.parent) == 0o700

    # an agent folder from before the rule: world-readable; the next open tightens it
    state.chmod(0o755)
    for path in _files(state):
        path.chmod(0o644)
    with Agent(_config(state), None, _uplink(hub)) as agent:
        assert agent.snapshot is not None  # the saved snapshot still loads
        assert {_mode(p) for p in _files(state)} == {0o600}
    assert _mode(state) == 0o700


def _queued(state: Path) -> list[dict[str, object]]:
    """The events in the agent's queue file, read as another process would."""
    with sqlite3.connect(state / QUEUE_FILE) as conn:
        return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM event ORDER BY seq")]


def _bytes_of(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in _files(state) if p.name.startswith(QUEUE_FILE))


def test_strangers_are_not_queued_unless_the_operator_opts_in_and_then_expire(
    tmp_path: Path,
    local_gallery: Gallery,
    edge_pipeline: Pipeline,
    two_people_video: Path,
    walkers: tuple[Person, Person],
) -> None:
    known, stranger = walkers
    local_gallery.delete_person(COLLECTION, stranger.name)  # the second walker is a stranger
    hub = EdgeHub(local_gallery, generate_signing_key())
    uplink = _uplink(hub)
    known_id = local_gallery.person(COLLECTION, known.name).id

    # the link is down after the snapshot was pulled: the device decides, and queues
    state = tmp_path / "default"
    with Agent(_config(state, drain_s=0.2), edge_pipeline, uplink) as agent:
        agent.pull_snapshot()
        uplink.down = True
        report = agent.run(VideoSource(two_people_video, every=3))
    assert (report.tracks, report.identified, report.strangers, report.strangers_kept) == (
        2,
        1,
        1,
        0,
    )
    queued = _queued(state)
    assert [e["decision"]["person_id"] for e in queued] == [known_id]  # type: ignore[index]

    # opted in for 1 s: the stranger is queued, then deleted, never uploaded
    state = tmp_path / "opted-in"
    uplink.down = False
    with Agent(_config(state, drain_s=0.2, queue_strangers_s=1.0), edge_pipeline, uplink) as agent:
        agent.pull_snapshot()
        uplink.down = True
        report = agent.run(VideoSource(two_people_video, every=3))
    assert (report.strangers, report.strangers_kept, report.queue.pending) == (1, 1, 2)
    (kept,) = [e for e in _queued(state) if e["decision"]["person_id"] is None]  # type: ignore[index]
    with sqlite3.connect(state / QUEUE_FILE) as conn:
        expiries = [x for (x,) in conn.execute("SELECT expires_at FROM event ORDER BY seq")]
    assert sum(x is not None for x in expiries) == 1  # only the stranger's event expires
    embedding = str(kept["embedding"]).encode()
    assert embedding in _bytes_of(state)
    time.sleep(1.2)
    uplink.down = False
    with Agent(_config(state, drain_s=5.0), None, uplink) as agent:
        report = agent.run(None)
    assert report.queue.pending == 0
    assert kept["key"] not in uplink.stored  # expired before the link came back
    assert [e.decision.person_id for e in uplink.stored.values() if e.decision] == [known_id]
    assert embedding not in _bytes_of(state)  # gone from the database file and its log


def test_dead_events_have_a_retention_limit(tmp_path: Path) -> None:
    limits = QueueLimits(dead_retention_s=60)
    now = time.time()
    with EventQueue(tmp_path / "q.db", limits) as queue:
        for key in ("a", "b"):
            queue.put(key, json.dumps({"key": key, "secret": f"embedding-of-{key}"}).encode())
        queue.bury("a", "422: invalid device id")
        assert queue.expire(now=now + 30).dead == 0
        assert queue.expire(now=now + 61).dead == 1
        assert queue.dead() == [] and [e.key for e in queue.batch()] == ["b"]
    assert b"embedding-of-a" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())


def _old_queue(path: Path) -> None:
    """A queue as an agent before this rule left it: no expiry columns, a dead event."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE event (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL "
            "UNIQUE, payload BLOB NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, dead_reason TEXT);"
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        conn.execute(
            "INSERT INTO event (key, payload, size, created_at, dead_reason) "
            "VALUES ('old', x'7b7d', 2, ?, 'refused')",
            (time.time() - 30 * 86400,),
        )


def test_visage_edge_purge(tmp_path: Path, hub: EdgeHub) -> None:
    state = tmp_path / "agent"
    with Agent(_config(state), None, _uplink(hub, ttl_s=1)) as agent:
        agent.pull_snapshot()
    with EventQueue(state / QUEUE_FILE) as queue:
        queue.put("dead", b"{}")
        queue.bury("dead", "422: malformed")
        queue.put("stranger", b"{}", expires_at=time.time() - 1)
        queue.put("kept", b"{}")
    time.sleep(1.1)
    done = _visage("edge", "purge", "--state", str(state), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"expired": 1, "dead": 1, "snapshot_deleted": True}
    assert not (state / SNAPSHOT_FILE).exists()
    with EventQueue(state / QUEUE_FILE) as queue:
        assert [e.key for e in queue.batch()] == ["kept"] and queue.stats().dead == 0

    old = tmp_path / "old"
    old.mkdir()
    _old_queue(old / QUEUE_FILE)
    done = _visage("edge", "purge", "--state", str(old), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"expired": 0, "dead": 1, "snapshot_deleted": False}

    missing = _visage("edge", "purge", "--state", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no edge agent state" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "none").exists()


def test_an_expired_snapshot_is_deleted_from_disk(
    tmp_path: Path, hub: EdgeHub, enrollment: dict[str, list[np.ndarray]]
) -> None:
    state = tmp_path / "agent"
    probe = next(iter(enrollment.values()))[0]
    with Agent(_config(state), None, _uplink(hub, ttl_s=1)) as agent:
        snapshot = agent.pull_snapshot()
        decision = agent.decide(probe)
        assert decision is not None and decision.person_id is not None
        time.sleep(1.1)
        assert agent.decide(probe) is None  # found expired while in use ...
        assert not (state / SNAPSHOT_FILE).exists()  # ... and deleted
    with Agent(_config(state), None, _uplink(hub, ttl_s=1)) as agent:
        agent.pull_snapshot()
    time.sleep(1.1)
    with Agent(_config(state), None, _uplink(hub)) as agent:  # found expired on start
        assert agent.snapshot is None and not (state / SNAPSHOT_FILE).exists()
        assert agent.queue.get_meta("snapshot_sequence") == str(snapshot.sequence)  # replay guard


def _visage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visage", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_an_invalid_device_id_is_refused_before_anything_is_queued(
    tmp_path: Path, hub: EdgeHub, two_people_video: Path
) -> None:
    state = tmp_path / "agent"
    done = _visage(
        "edge", "run", "--server", "http://127.0.0.1:9", "--key", "k", "--collection",
        COLLECTION, "--state", str(state), "--device-id", "door 1/../x", "--source",
        str(two_people_video), "--drain", "0",
    )  # fmt: skip
    assert done.returncode == 1 and "invalid device id" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (state / QUEUE_FILE).exists()

    # a folder whose stored id the server would refuse (an older agent took any --device-id)
    with EventQueue(state / QUEUE_FILE) as queue:
        queue.set_meta("device_id", "door 1")
    with pytest.raises(InputError, match="invalid device id"):
        Agent(_config(state), None, _uplink(hub))
    with pytest.raises(InputError, match="invalid device id"):
        DeviceInfo("", "0.1.0")
