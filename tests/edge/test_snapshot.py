"""Signed snapshots: verified before use; tampered, foreign, expired, replayed ones refused;
offline decisions match the gallery's rule (nearest template, calibrated threshold)."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.edge.conftest import COLLECTION
from visage.decision import default_calibration, normalize
from visage.edge.events import DeviceInfo
from visage.edge.snapshot import (
    OfflineGallery,
    Snapshot,
    SnapshotPerson,
    SnapshotRefused,
    sign_snapshot,
    verify_snapshot,
)
from visage.gallery import Gallery
from visage.server.hub import EdgeHub
from visage.signing import generate_signing_key, load_signing_key, parse_public_key, public_key_text

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _snapshot(
    sequence: int = 3, *, expires_in: float = 3600.0, consent_end: datetime | None = None
) -> Snapshot:
    rng = np.random.default_rng(7)
    persons = tuple(
        SnapshotPerson(
            f"p{i}",
            f"Person {i}",
            None,
            consent_end if i == 1 else None,
            normalize(rng.normal(size=(2, 128))),
        )
        for i in range(3)
    )
    return Snapshot(
        collection="door",
        model_id="dlib_resnet_v1",
        dim=128,
        sequence=sequence,
        issued_at=NOW,
        expires_at=NOW + timedelta(seconds=expires_in),
        calibration=default_calibration("dlib_resnet_v1"),
        persons=persons,
    )


def test_round_trip_and_identify() -> None:
    key = generate_signing_key()
    snap = _snapshot()
    loaded = verify_snapshot(sign_snapshot(snap, key), key.public_key(), now=NOW, collection="door")
    assert loaded.content_sha256() == snap.content_sha256()
    assert (loaded.sequence, loaded.issued_at, loaded.expires_at) == (
        3,
        snap.issued_at,
        snap.expires_at,
    )
    offline = OfflineGallery(loaded)
    probe = snap.persons[2].embeddings[1]
    found = offline.identify(probe, now=NOW)
    assert found.best is not None and found.best.person_id == "p2" and found.best.distance < 1e-3
    stranger = normalize(np.random.default_rng(1).normal(size=128))
    assert offline.identify(stranger, now=NOW).unknown


@pytest.mark.parametrize("where", ["payload", "signature"])
def test_tampered_snapshot_refused(where: str) -> None:
    key = generate_signing_key()
    doc = json.loads(sign_snapshot(_snapshot(), key))
    raw = bytearray(base64.b64decode(doc[where]))
    raw[len(raw) // 2] ^= 0x01
    doc[where] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SnapshotRefused, match="bad signature"):
        verify_snapshot(json.dumps(doc).encode(), key.public_key(), now=NOW)


def test_other_key_and_garbage_refused() -> None:
    document = sign_snapshot(_snapshot(), generate_signing_key())
    with pytest.raises(SnapshotRefused, match="bad signature"):
        verify_snapshot(document, generate_signing_key().public_key(), now=NOW)
    with pytest.raises(SnapshotRefused, match="not a signed snapshot"):
        verify_snapshot(b"{}", generate_signing_key().public_key(), now=NOW)


def test_expired_replayed_and_foreign_snapshots_refused() -> None:
    key = generate_signing_key()
    document = sign_snapshot(_snapshot(sequence=3, expires_in=60), key)
    with pytest.raises(SnapshotRefused, match="expired"):
        verify_snapshot(document, key.public_key(), now=NOW + timedelta(seconds=61))
    with pytest.raises(SnapshotRefused, match="replay"):
        verify_snapshot(document, key.public_key(), now=NOW, min_sequence=4)
    with pytest.raises(SnapshotRefused, match="collection"):
        verify_snapshot(document, key.public_key(), now=NOW, collection="lobby")
    offline = OfflineGallery(verify_snapshot(document, key.public_key(), now=NOW, min_sequence=3))
    with pytest.raises(SnapshotRefused, match="expired"):
        offline.identify(_snapshot().persons[0].embeddings[0], now=NOW + timedelta(minutes=2))


def test_person_whose_consent_expires_stops_matching() -> None:
    snap = _snapshot(consent_end=NOW + timedelta(minutes=5))
    offline = OfflineGallery(snap)
    probe = snap.persons[1].embeddings[0]
    assert offline.identify(probe, now=NOW).best.person_id == "p1"  # type: ignore[union-attr]
    later = offline.identify(probe, now=NOW + timedelta(minutes=6))
    assert all(c.person_id != "p1" for c in later.candidates)


def test_signing_key_file_and_public_key_text(tmp_path: Path) -> None:
    path = tmp_path / "edge.pem"
    key = load_signing_key(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_signing_key(path)
    text = public_key_text(key.public_key())
    assert text == public_key_text(again.public_key()) and text.startswith("ed25519:")
    assert public_key_text(parse_public_key(text)) == text


def test_offline_decisions_follow_the_gallery_identify_rule(local_gallery: Gallery) -> None:
    """A device decides 1:N offline at the threshold the gallery's identify uses for the same
    collection size and target FPIR, not at the looser per-comparison (1:1) threshold."""
    key = generate_signing_key()
    hub = EdgeHub(local_gallery, key)
    device = DeviceInfo(id="door-1", agent_version="test")
    snap = verify_snapshot(
        hub.snapshot(key_id="vk_t", collection=COLLECTION, device=device), key.public_key()
    )
    probe = unit_vectors_like(snap.persons[0].embeddings[0])
    online = local_gallery.identify(COLLECTION, probe, purpose="test")
    assert snap.operating_point == online.operating_point  # the rule, at the same size
    assert online.operating_point.margin is not None
    offline = OfflineGallery(snap).identify(probe)
    assert offline.threshold == pytest.approx(online.threshold, abs=1e-6)  # this probe's bar
    assert [c.person_id for c in offline.candidates] == [c.person_id for c in online.candidates[:3]]
    assert offline.unknown == online.unknown
    assert offline.to_json()["operating_point"]["target_fpir"] == online.operating_point.target_fpir
    per_comparison = default_calibration(snap.model_id).threshold
    assert snap.calibration.threshold < per_comparison  # stricter for a 1:N decision
    assert "FPIR" in snap.calibration.source
    assert OfflineGallery(snap).threshold == snap.calibration.threshold


def unit_vectors_like(vector: np.ndarray) -> np.ndarray:
    """A probe near ``vector`` (the same person)."""
    rng = np.random.default_rng(5)
    return normalize(vector + 0.01 * rng.standard_normal(vector.shape).astype(np.float32))
