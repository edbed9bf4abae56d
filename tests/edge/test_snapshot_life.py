"""The device, not the requester, bounds how long it uses a snapshot, and one sequence names one
gallery (issue 18, item 3, agent side). Each test replays the attack on a real agent folder
with documents signed by a real :class:`EdgeHub`:

- a 30-day document (asked for by anyone holding a device key, or granted by a server set to
  allow it) installed on an agent configured for a short lifetime was used for 30 days;
- a document with the sequence the agent holds but other content (a server restored from a
  backup re-issuing a sequence, a person deleted since back in it) was accepted.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.edge.conftest import COLLECTION
from visage.edge.agent import SNAPSHOT_FILE, Agent, AgentConfig
from visage.edge.events import DeviceInfo
from visage.edge.snapshot import SnapshotPerson, SnapshotRefused, sign_snapshot, verify_snapshot
from visage.edge.sync import Backoff, MemoryUplink
from visage.gallery import Gallery
from visage.server.hub import MAX_TTL_S, EdgeHub
from visage.signing import generate_signing_key

DEVICE = DeviceInfo("dev-life", "0.1.0")
KEY = generate_signing_key()


@pytest.fixture
def hub(local_gallery: Gallery) -> EdgeHub:
    """A server that grants what it is asked for, up to 30 days."""
    return EdgeHub(local_gallery, KEY, max_ttl_s=MAX_TTL_S)


def _document(hub: EdgeHub, ttl_s: int = MAX_TTL_S) -> bytes:
    return hub.snapshot(key_id="vk_test", collection=COLLECTION, device=DEVICE, ttl_s=ttl_s)


def _config(state: Path, ttl_s: int) -> AgentConfig:
    return AgentConfig(COLLECTION, state, backoff=Backoff(0.01, 0.05), snapshot_ttl_s=ttl_s)


def _probe(enrollment: dict[str, list[np.ndarray]]) -> np.ndarray:
    return next(iter(enrollment.values()))[0]


def test_an_agent_uses_a_snapshot_no_longer_than_its_own_lifetime(
    tmp_path: Path, hub: EdgeHub, enrollment: dict[str, list[np.ndarray]]
) -> None:
    document = _document(hub)
    stated = verify_snapshot(document, KEY.public_key())
    assert stated.expires_at - stated.issued_at == timedelta(days=30)  # the attack's document
    uplink = MemoryUplink(snapshot=document, key=hub.public_key())
    probe = _probe(enrollment)

    with Agent(_config(tmp_path / "ten-minutes", 600), None, uplink) as agent:
        received = datetime.now(UTC)
        used = agent.pull_snapshot()
        decision = agent.decide(probe)
        assert decision is not None and decision.person_id is not None  # positive control
        assert received + timedelta(seconds=600) <= used.expires_at  # 600 s from receipt ...
        assert used.expires_at <= datetime.now(UTC) + timedelta(seconds=600)  # ... not 30 days

    state = tmp_path / "one-second"
    with Agent(_config(state, 1), None, uplink) as agent:
        first = agent.pull_snapshot()
        assert agent.decide(probe) is not None
        time.sleep(1.1)
        assert agent.decide(probe) is None  # past the agent's own lifetime: not used ...
        assert not (state / SNAPSHOT_FILE).exists()  # ... and deleted
        with pytest.raises(SnapshotRefused, match="at most 1 s after receiving"):
            agent.pull_snapshot()  # the same document again does not restart the clock
        assert agent.snapshot is None and not (state / SNAPSHOT_FILE).exists()

        uplink.snapshot = _document(hub)  # a re-pull: equal sequence, same content, issued later
        again = agent.pull_snapshot()
        assert again.sequence == first.sequence and agent.decide(probe) is not None
    time.sleep(1.1)
    with Agent(_config(state, 1), None, uplink) as agent:  # found past its life on start
        assert agent.snapshot is None and not (state / SNAPSHOT_FILE).exists()


def test_an_equal_sequence_with_other_content_is_refused(
    tmp_path: Path, hub: EdgeHub, enrollment: dict[str, list[np.ndarray]]
) -> None:
    state = tmp_path / "agent"
    honest = verify_snapshot(_document(hub, 3600), KEY.public_key())
    uplink = MemoryUplink(snapshot=sign_snapshot(honest, KEY), key=hub.public_key())
    probe = _probe(enrollment)
    later = timedelta(seconds=5)
    with Agent(_config(state, 3600), None, uplink) as agent:
        agent.pull_snapshot()
        real = agent.decide(probe)
        assert real is not None and real.person_id is not None

        # positive control: the same gallery under the same sequence, issued later, is a re-pull
        repull = replace(honest, issued_at=honest.issued_at + later)
        uplink.snapshot = sign_snapshot(repull, KEY)
        assert agent.pull_snapshot().issued_at == repull.issued_at
        saved = (state / SNAPSHOT_FILE).read_bytes()

        # the attack: the same sequence, signed by the same key, with a person in it that the
        # gallery at that sequence did not hold (here one matching the probe best)
        intruder = SnapshotPerson("intruder", "Intruder", None, None, probe[None, :])
        forged = replace(
            repull, issued_at=repull.issued_at + later, persons=(*honest.persons, intruder)
        )
        uplink.snapshot = sign_snapshot(forged, KEY)
        with pytest.raises(SnapshotRefused, match="already in use with other content"):
            agent.pull_snapshot()
        assert (state / SNAPSHOT_FILE).read_bytes() == saved  # the one in use stays
        assert agent.decide(probe) == real

    (state / SNAPSHOT_FILE).write_bytes(uplink.snapshot)  # and put in its place on disk
    with Agent(_config(state, 3600), None, uplink) as agent:
        assert agent.snapshot is None
