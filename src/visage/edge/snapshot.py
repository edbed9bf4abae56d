"""Offline gallery snapshots: what a device needs to identify with no link, signed by the server.

A snapshot holds, for one collection, each consented person's id, display name, external id,
consent expiry and template embeddings — never an image — with the model id and the calibration
its decisions use. The server signs it with Ed25519; the device verifies the signature against
a key it trusts *before* reading anything else, then refuses it when:

- the signature does not match (any byte of the payload changed, or another key signed it);
- it has expired (``expires_at``, set by the server; a device that cannot sync stops
  identifying rather than use a gallery that may still hold revoked persons);
- its ``sequence`` is lower than one the device already used (a replayed old snapshot would
  bring deleted persons back);
- it is for another collection, format or version.

The server picks ``expires_at``; the device does not take its word alone (:func:`admit`): it
uses a snapshot at most its own configured lifetime after it first received that document,
so a device set to 600 s stops identifying 600 s after a pull even if the document says 30
days. A snapshot with the *same* sequence as the one in use but other content is refused (one
sequence names one gallery; the same content again, a re-pull, is accepted and, if newer,
restarts the device's clock).

A saved snapshot found expired is deleted from disk (:func:`delete_if_expired`): names and
templates are not kept on a device past the time the server allowed.

``sequence`` grows whenever the content changes (a person deleted, consent revoked or
re-granted, a template added), so "deleted persons vanish at the next sync" is checkable.
A person whose consent expires while a snapshot is in use stops matching at that moment.

The document on the wire and on disk is JSON ``{"format", "version", "key_id", "payload",
"signature"}``; ``payload`` is the base64 of the canonical JSON the signature covers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..decision import Calibration, OpenSetPoint, distances
from ..errors import InputError
from ..signing import key_id
from .identity import Identity, Match

SNAPSHOT_FORMAT = "visage-edge-snapshot"
SNAPSHOT_VERSION = 1
DEFAULT_TTL_S = 24 * 3600
"""A snapshot's lifetime when nobody names one: what the server grants by default and the
longest a device with no configured lifetime uses a snapshot."""


class SnapshotRefused(InputError):
    """A snapshot that must not be used; ``reason`` says why (tampered, expired, replayed …)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"offline snapshot refused: {reason}")


@dataclass(frozen=True)
class SnapshotPerson:
    """One consented person: ``embeddings`` ``(n, dim) float32`` L2-normalised templates."""

    id: str
    display_name: str
    external_id: str | None
    consent_expires_at: datetime | None
    embeddings: npt.NDArray[np.float32]

    def consented(self, now: datetime) -> bool:
        return self.consent_expires_at is None or self.consent_expires_at > now


@dataclass(frozen=True)
class Snapshot:
    """A collection's consented templates at one ``sequence``, valid until ``expires_at``."""

    collection: str
    model_id: str
    dim: int
    sequence: int
    issued_at: datetime
    expires_at: datetime
    calibration: Calibration
    persons: tuple[SnapshotPerson, ...]
    operating_point: OpenSetPoint | None = None
    """identify's rule at the snapshot's size (``None``: ``calibration``'s threshold alone)."""

    @property
    def templates(self) -> int:
        return sum(len(p.embeddings) for p in self.persons)

    def content(self) -> dict[str, Any]:
        """Everything but the issue times and sequence: equal content means an equal gallery."""
        return {
            "collection": self.collection,
            "model_id": self.model_id,
            "dim": self.dim,
            "calibration": asdict(self.calibration),
            "operating_point": None
            if self.operating_point is None
            else asdict(self.operating_point),
            "persons": [
                {
                    "id": p.id,
                    "display_name": p.display_name,
                    "external_id": p.external_id,
                    "consent_expires_at": _iso(p.consent_expires_at),
                    "embeddings": base64.b64encode(
                        np.ascontiguousarray(p.embeddings, dtype="<f4").tobytes()
                    ).decode("ascii"),
                }
                for p in sorted(self.persons, key=lambda p: p.id)
            ],
        }

    def content_sha256(self) -> str:
        return hashlib.sha256(_canonical(self.content())).hexdigest()

    def payload(self) -> bytes:
        """The canonical JSON bytes the signature covers."""
        return _canonical(
            {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "sequence": self.sequence,
                "issued_at": _iso(self.issued_at),
                "expires_at": _iso(self.expires_at),
                **self.content(),
            }
        )

    @classmethod
    def from_payload(cls, data: bytes) -> Snapshot:
        """Parse a payload whose signature was already checked; :class:`SnapshotRefused` if odd."""
        try:
            doc = json.loads(data)
            if doc["format"] != SNAPSHOT_FORMAT or doc["version"] != SNAPSHOT_VERSION:
                raise SnapshotRefused(f"unsupported format {doc['format']!r} v{doc['version']}")
            dim = int(doc["dim"])
            persons = tuple(
                SnapshotPerson(
                    id=str(p["id"]),
                    display_name=str(p["display_name"]),
                    external_id=p["external_id"],
                    consent_expires_at=_parse_time(p["consent_expires_at"]),
                    embeddings=np.frombuffer(
                        base64.b64decode(p["embeddings"], validate=True), dtype="<f4"
                    )
                    .astype(np.float32)
                    .reshape(-1, dim),
                )
                for p in doc["persons"]
            )
            return cls(
                collection=str(doc["collection"]),
                model_id=str(doc["model_id"]),
                dim=dim,
                sequence=int(doc["sequence"]),
                issued_at=_require_time(doc["issued_at"]),
                expires_at=_require_time(doc["expires_at"]),
                calibration=Calibration(**doc["calibration"]),
                persons=persons,
                operating_point=(
                    OpenSetPoint(**point) if (point := doc.get("operating_point")) else None
                ),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise SnapshotRefused(f"malformed payload ({exc})") from None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"naive time {value!r}")
    return parsed


def _require_time(value: str) -> datetime:
    parsed = _parse_time(value)
    if parsed is None:
        raise ValueError("missing time")
    return parsed


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# ---------------------------------------------------------------------- documents


def sign_snapshot(snapshot: Snapshot, key: Ed25519PrivateKey) -> bytes:
    """The signed document for ``snapshot`` (JSON bytes)."""
    payload = snapshot.payload()
    return _canonical(
        {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "key_id": key_id(key.public_key()),
            "payload": base64.b64encode(payload).decode("ascii"),
            "signature": base64.b64encode(key.sign(payload)).decode("ascii"),
        }
    )


def verify_snapshot(
    document: bytes,
    trusted: Ed25519PublicKey,
    *,
    now: datetime | None = None,
    min_sequence: int = 0,
    collection: str | None = None,
) -> Snapshot:
    """The snapshot in ``document`` once every check passes; :class:`SnapshotRefused` otherwise.

    The signature is checked on the exact payload bytes before the payload is parsed.
    """
    try:
        outer = json.loads(document)
        payload = base64.b64decode(outer["payload"], validate=True)
        signature = base64.b64decode(outer["signature"], validate=True)
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise SnapshotRefused("not a signed snapshot document") from None
    try:
        trusted.verify(signature, payload)
    except InvalidSignature:
        raise SnapshotRefused(
            f"bad signature (tampered, or not signed by trusted key {key_id(trusted)})"
        ) from None
    snapshot = Snapshot.from_payload(payload)
    when = now or datetime.now(UTC)
    if snapshot.expires_at <= when:
        raise SnapshotRefused(f"expired at {snapshot.expires_at.isoformat()}")
    if snapshot.sequence < min_sequence:
        raise SnapshotRefused(
            f"sequence {snapshot.sequence} is older than {min_sequence}, already in use (replay)"
        )
    if collection is not None and snapshot.collection != collection:
        raise SnapshotRefused(f"for collection {snapshot.collection!r}, not {collection!r}")
    return snapshot


def stated_expiry(document: bytes) -> datetime | None:
    """The ``expires_at`` a document states, read *without* checking its signature (``None``
    when it cannot be read): enough to decide to delete it, never to use it."""
    try:
        payload = json.loads(base64.b64decode(json.loads(document)["payload"], validate=True))
        return _require_time(payload["expires_at"])
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None


@dataclass(frozen=True)
class HeldSnapshot:
    """What a device records of the snapshot it uses, to judge the next one: its ``sequence``,
    :meth:`Snapshot.content_sha256`, the server's ``issued_at`` and when the device first
    received that document (``received_at``, the device's clock)."""

    sequence: int
    content_sha256: str
    issued_at: datetime
    received_at: datetime

    def expires_at(self, life_s: int) -> datetime:
        """The end of the device's own allowance for this document."""
        return self.received_at + timedelta(seconds=life_s)

    def to_json(self) -> str:
        return json.dumps(
            {
                "sequence": self.sequence,
                "content_sha256": self.content_sha256,
                "issued_at": _iso(self.issued_at),
                "received_at": _iso(self.received_at),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> HeldSnapshot | None:
        """The record in ``text``; ``None`` when it cannot be read (the snapshot is not used)."""
        try:
            doc = json.loads(text)
            return cls(
                int(doc["sequence"]),
                str(doc["content_sha256"]),
                _require_time(doc["issued_at"]),
                _require_time(doc["received_at"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


def admit(
    snapshot: Snapshot, held: HeldSnapshot | None, *, life_s: int, now: datetime | None = None
) -> tuple[Snapshot, HeldSnapshot]:
    """The verified ``snapshot`` as the device uses it, and the record to keep of it.

    Its expiry becomes ``min(expires_at, received_at + life_s)``: the device's own lifetime
    bounds what the requester (or whoever obtained a long-lived document) chose. ``received_at``
    is now, unless ``held`` is the same sequence and content issued no earlier (the document in
    use, read back from disk or replayed): then the device's clock keeps running from the first
    receipt, so replaying a document never extends its life. :class:`SnapshotRefused` when
    ``held`` has the same sequence and other content, or the capped expiry has passed.
    """
    when = now or datetime.now(UTC)
    digest = snapshot.content_sha256()
    received = when
    if held is not None and held.sequence == snapshot.sequence:
        if held.content_sha256 != digest:
            raise SnapshotRefused(
                f"sequence {snapshot.sequence} is already in use with other content "
                "(one sequence names one gallery)"
            )
        if snapshot.issued_at <= held.issued_at:
            received = held.received_at
    record = HeldSnapshot(snapshot.sequence, digest, snapshot.issued_at, received)
    capped = replace(snapshot, expires_at=min(snapshot.expires_at, record.expires_at(life_s)))
    if capped.expires_at <= when:
        raise SnapshotRefused(
            f"expired at {capped.expires_at.isoformat()} (this device uses a snapshot at most "
            f"{life_s} s after receiving it)"
        )
    return capped, record


def delete_if_expired(
    path: Path, *, now: datetime | None = None, not_after: datetime | None = None
) -> bool:
    """Delete the snapshot file at ``path`` when the expiry it states, or the device's own
    limit ``not_after``, has passed; ``True`` if so.

    Deleting needs no trust in the file (whoever could forge it could delete it), so the
    signature is not checked; a file whose expiry cannot be read is left for the caller.
    """
    try:
        document = path.read_bytes()
    except FileNotFoundError:
        return False
    expiry = stated_expiry(document)
    if expiry is None:
        return False
    if not_after is not None:
        expiry = min(expiry, not_after)
    if expiry > (now or datetime.now(UTC)):
        return False
    path.unlink(missing_ok=True)
    return True


class OfflineGallery:
    """An :class:`~visage.edge.identity.Identifier` over a verified snapshot, with no link.

    Same decision as the gallery's identify: each person scored by their nearest template,
    the nearest against the snapshot's operating point (its bar for the second-nearest person,
    :meth:`visage.decision.OpenSetPoint.threshold_for`), ``unknown`` when beyond it. Persons
    whose consent has expired by ``now`` are skipped; an expired snapshot raises
    :class:`SnapshotRefused`.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        rows = [p.embeddings for p in snapshot.persons]
        self._matrix = np.concatenate(rows) if rows else np.empty((0, snapshot.dim), np.float32)
        self._owner = np.repeat(np.arange(len(rows)), [len(r) for r in rows])

    @property
    def threshold(self) -> float:
        return self.snapshot.calibration.threshold

    def identify(
        self, embedding: npt.NDArray[np.float32], *, k: int = 3, now: datetime | None = None
    ) -> Identity:
        when = now or datetime.now(UTC)
        if self.snapshot.expires_at <= when:
            raise SnapshotRefused(f"expired at {self.snapshot.expires_at.isoformat()}")
        persons = self.snapshot.persons
        best = np.full(len(persons), np.inf, np.float32)
        if len(self._matrix):
            np.minimum.at(best, self._owner, distances(embedding, self._matrix))
        usable = [
            i
            for i in np.argsort(best, kind="stable")
            if np.isfinite(best[i]) and persons[i].consented(when)
        ]
        ranked = [(int(i), float(best[i])) for i in usable[: max(k, 2)]]
        point = self.snapshot.operating_point
        second = ranked[1][1] if len(ranked) > 1 else None
        bar = self.threshold if point is None else point.threshold_for(second)
        candidates = tuple(
            Match(persons[i].id, persons[i].display_name, d, d <= bar) for i, d in ranked[:k]
        )
        return Identity(
            candidates=candidates,
            unknown=not candidates or not candidates[0].same,
            threshold=bar,
            operating_point=point,
            source=f"snapshot:{self.snapshot.collection}#{self.snapshot.sequence}",
        )
