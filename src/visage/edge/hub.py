"""The server's side of the edge: device registry, event ingestion, signed snapshots.

Rules, in one place (the HTTP routes in :mod:`visage.server.routes.edge` only translate):

- **Exactly once.** An event is stored once per (API key, idempotency key): a retry of an
  event already stored is answered ``duplicate`` with the stored outcome and changes nothing.
  A batch's events, their audit events and the device's last-seen row are written in one
  transaction, after the store's writer lock (the audit chain's state row), so a connection
  cut at any point leaves either all of a batch or none of it.
- **Every identification audited.** An event decided on the device (from its snapshot) is
  appended to the audit log as ``edge.identify`` with the device key as actor, in the same
  transaction that stores the event. An event with no decision — or whose decision names a
  person the gallery no longer holds with valid consent (a stale snapshot) — is identified
  here with :meth:`Gallery.identify` (which audits it) before it is stored. The probe
  embedding is never stored, only its sha256 — the gallery's rule for probes.
- **Snapshots from the gallery's own rules.** A snapshot holds the persons the gallery says
  have valid consent now (:attr:`PersonInfo.consent_valid`), with the templates its export
  hands out (embeddings only, never images), the calibration it decides with, and the
  consent expiry. Its ``sequence`` increases whenever that content changes, so a deletion or
  revocation reaches a device at its next pull and an older snapshot cannot be replayed.
- **Devices.** A device is known by (key, device id, collection), with its agent version,
  first and last contact, events stored, the last snapshot it pulled and the queue state it
  last reported.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from ..errors import InputError, NotFound, StorageError
from ..gallery import Gallery, PersonInfo, audit
from ..gallery.store import Base, StateRow, UTCDateTime, lock_state, sqlite_path, utcnow
from ..signing import load_signing_key, public_key_text
from .events import DeviceInfo, EdgeEvent, Receipt
from .snapshot import Snapshot, SnapshotPerson, sign_snapshot

SIGNING_KEY_ENV = "VISAGE_EDGE_SIGNING_KEY"
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 30 * 24 * 3600


class EdgeDeviceRow(Base):
    """A device as the server last saw it."""

    __tablename__ = "edge_device"
    __table_args__ = (UniqueConstraint("key_id", "device_id", "collection"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[str] = mapped_column(String(100))
    collection: Mapped[str] = mapped_column(String(200), index=True)
    agent_version: Mapped[str] = mapped_column(String(50))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    events: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_sequence: Mapped[int | None] = mapped_column(Integer)
    queue_pending: Mapped[int | None] = mapped_column(Integer)
    queue_dropped: Mapped[int | None] = mapped_column(Integer)
    queue_dead: Mapped[int | None] = mapped_column(Integer)


class EdgeEventRow(Base):
    """One stored edge event (its probe embedding is not kept, only the hash)."""

    __tablename__ = "edge_event"
    __table_args__ = (UniqueConstraint("key_id", "event_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(200), index=True)
    device_id: Mapped[str] = mapped_column(String(100))
    track: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    detections: Mapped[int] = mapped_column(Integer)
    quality: Mapped[float] = mapped_column(Float)
    embedding_sha256: Mapped[str] = mapped_column(String(64))
    person_id: Mapped[str | None] = mapped_column(String(32))
    distance: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str] = mapped_column(String(10))
    snapshot_sequence: Mapped[int | None] = mapped_column(Integer)
    crop: Mapped[bytes | None] = mapped_column(LargeBinary)
    audit_seq: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EdgeSnapshotRow(Base):
    """A snapshot sequence number issued for a collection and the content it stands for."""

    __tablename__ = "edge_snapshot"
    __table_args__ = (UniqueConstraint("collection", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(200))
    sequence: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class DeviceRecord:
    """A registered device, for listing."""

    device_id: str
    key_id: str
    collection: str
    agent_version: str
    first_seen_at: datetime
    last_seen_at: datetime
    events: int
    snapshot_sequence: int | None
    queue_pending: int | None
    queue_dropped: int | None
    queue_dead: int | None

    @classmethod
    def from_row(cls, row: EdgeDeviceRow) -> DeviceRecord:
        return cls(
            row.device_id,
            row.key_id,
            row.collection,
            row.agent_version,
            row.first_seen_at,
            row.last_seen_at,
            row.events,
            row.snapshot_sequence,
            row.queue_pending,
            row.queue_dropped,
            row.queue_dead,
        )


@dataclass(frozen=True)
class QueueReport:
    """What a device says about its own queue when it uploads."""

    pending: int
    dead: int
    dropped: int


def signing_key_path(db_url: str) -> Path:
    """``$VISAGE_EDGE_SIGNING_KEY``, else ``<sqlite file>.edge-signing-key.pem`` beside the store.

    :class:`StorageError` for a non-SQLite store without the variable (there is no folder to
    put the key in).
    """
    configured = os.environ.get(SIGNING_KEY_ENV)
    if configured:
        return Path(configured).expanduser()
    db_file = sqlite_path(db_url)
    if db_file is None:
        raise StorageError(f"set {SIGNING_KEY_ENV} to the snapshot signing key file (PEM)")
    return db_file.with_name(db_file.name + ".edge-signing-key.pem")


class EdgeHub:
    """Edge devices' business with the server, over the gallery and its store (``engine``)."""

    def __init__(
        self,
        engine: Engine,
        gallery: Gallery,
        signing_key: Ed25519PrivateKey,
        *,
        default_ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        self.gallery = gallery
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = signing_key
        self.default_ttl_s = default_ttl_s

    @classmethod
    def open(cls, engine: Engine, gallery: Gallery, db_url: str) -> EdgeHub:
        """A hub whose signing key is found (or, beside a SQLite store, created) per
        :func:`signing_key_path`."""
        path = signing_key_path(db_url)
        return cls(
            engine, gallery, load_signing_key(path, create=SIGNING_KEY_ENV not in os.environ)
        )

    def public_key(self) -> str:
        return public_key_text(self._key.public_key())

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"edge store error: {exc}") from exc

    @contextmanager
    def _writing(self) -> Iterator[tuple[Session, StateRow]]:
        """A write transaction holding the store's writer lock (the audit chain's state row),
        taken first as every gallery writer does. :class:`IntegrityError` passes through."""
        try:
            with self._sessions.begin() as session:
                yield session, lock_state(session)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StorageError(f"edge store error: {exc}") from exc

    # ------------------------------------------------------------------ events

    def ingest(
        self,
        *,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        events: Sequence[dict[str, Any]],
        queue: QueueReport | None = None,
    ) -> list[Receipt]:
        """Store a batch of uploaded events exactly once each; one receipt per event, in order."""
        info = self.gallery.collection(collection)
        parsed: list[EdgeEvent | Receipt] = []
        for doc in events:
            parsed.append(self._check(doc, device, info.dim, info.model_id))
        fresh = [e for e in parsed if isinstance(e, EdgeEvent)]
        known = self._stored(key_id, [e.key for e in fresh])
        unseen = {e.key: e for e in reversed(fresh) if e.key not in known}  # first of each key
        purpose = f"edge device {device.id}"
        server_side: dict[str, tuple[str | None, float | None, int]] = {}
        valid: dict[str, bool] = {}
        for event in unseen.values():
            if not self._needs_server(collection, event, valid):
                continue
            found = self.gallery.identify(
                collection, event.embedding, k=1, purpose=purpose, actor=key_id
            )
            nearest = found.candidates[0] if found.candidates else None
            server_side[event.key] = (
                found.best.person_id if found.best else None,
                nearest.distance if nearest else None,
                found.audit_seq,
            )
        for attempt in (1, 2):
            try:
                stored = self._store(key_id, collection, device, fresh, server_side, purpose, queue)
                break
            except IntegrityError:
                if attempt == 2:
                    raise StorageError(
                        "edge events clashed twice with concurrent uploads"
                    ) from None
        answers = iter(stored)
        return [item if isinstance(item, Receipt) else next(answers) for item in parsed]

    def _needs_server(self, collection: str, event: EdgeEvent, valid: dict[str, bool]) -> bool:
        """True when the server must identify: no device decision, or one naming a person the
        gallery no longer holds with valid consent (the device's snapshot was stale)."""
        if event.decision is None:
            return True
        person = event.decision.person_id
        if person is None:
            return False
        if person not in valid:
            try:
                valid[person] = self.gallery.person(collection, person).consent_valid
            except NotFound:
                valid[person] = False
        return not valid[person]

    @staticmethod
    def _check(
        doc: dict[str, Any], device: DeviceInfo, dim: int, model_id: str
    ) -> EdgeEvent | Receipt:
        key = str(doc.get("key", ""))
        try:
            event = EdgeEvent.from_json(doc, dim=dim)
            if event.device_id != device.id:
                raise InputError(
                    f"event from device {event.device_id!r} in a batch of {device.id!r}"
                )
            if event.model_id != model_id:
                raise InputError(
                    f"embedding from model {event.model_id}; the collection uses {model_id}"
                )
        except InputError as exc:
            return Receipt(key, "rejected", reason=str(exc))
        return event

    def _stored(self, key_id: str, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        with self._reading() as session:
            found = session.scalars(
                select(EdgeEventRow.event_key).where(
                    EdgeEventRow.key_id == key_id, EdgeEventRow.event_key.in_(list(keys))
                )
            )
            return set(found)

    def _store(
        self,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        events: Sequence[EdgeEvent],
        server_side: dict[str, tuple[str | None, float | None, int]],
        purpose: str,
        queue: QueueReport | None,
    ) -> list[Receipt]:
        """One receipt per event, in order; a key seen before (stored, or earlier in this
        batch) is a duplicate carrying the stored outcome."""
        receipts: dict[str, Receipt] = {}
        out: list[Receipt] = []
        now = utcnow()
        keys = [e.key for e in events]
        with self._writing() as (session, state):
            rows = session.scalars(
                select(EdgeEventRow).where(
                    EdgeEventRow.key_id == key_id, EdgeEventRow.event_key.in_(keys)
                )
            )
            existing = {row.event_key: row for row in rows} if keys else {}
            for event in events:
                if event.key in existing or event.key in receipts:
                    row, first = existing.get(event.key), receipts.get(event.key)
                    person = row.person_id if row else first.person_id if first else None
                    out.append(Receipt(event.key, "duplicate", person))
                    continue
                person, distance, seq, by = self._outcome(
                    session, state, key_id, collection, event, server_side, purpose
                )
                session.add(
                    EdgeEventRow(
                        key_id=key_id, event_key=event.key, collection=collection,
                        device_id=device.id, track=event.track, first_seen=event.first_seen,
                        last_seen=event.last_seen, detections=event.detections,
                        quality=event.quality, embedding_sha256=event.embedding_sha256,
                        person_id=person, distance=distance, decided_by=by,
                        snapshot_sequence=event.decision.snapshot if event.decision else None,
                        crop=event.crop_jpeg, audit_seq=seq, received_at=now,
                    )
                )
                receipts[event.key] = Receipt(event.key, "stored", person)
                out.append(receipts[event.key])
            self._touch(session, key_id, collection, device, now, events=len(receipts),
                        queue=queue)
        return out

    @staticmethod
    def _outcome(
        session: Session,
        state: StateRow,
        key_id: str,
        collection: str,
        event: EdgeEvent,
        server_side: dict[str, tuple[str | None, float | None, int]],
        purpose: str,
    ) -> tuple[str | None, float | None, int, str]:
        """(person, distance, audit seq, who decided); audits a device decision here."""
        decision = event.decision
        if event.key in server_side or decision is None:
            person, distance, seq = server_side[event.key]
            return person, distance, seq, "server"
        row = audit.append(
            session,
            state,
            actor=key_id,
            action="edge.identify",
            collection=collection,
            purpose=purpose,
            input_hash=event.embedding_sha256,
            summary={
                "device": event.device_id,
                "event": event.key,
                "track": event.track,
                "person": decision.person_id,
                "unknown": decision.unknown,
                "distance": decision.distance,
                "threshold": decision.threshold,
                "snapshot": decision.snapshot,
                "first_seen": event.first_seen.isoformat(),
                "last_seen": event.last_seen.isoformat(),
            },
        )
        return decision.person_id, decision.distance, row.seq, "device"

    @staticmethod
    def _touch(
        session: Session,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        now: datetime,
        *,
        events: int = 0,
        queue: QueueReport | None = None,
        snapshot: int | None = None,
    ) -> None:
        """Create or update the device's row: last seen now, version, counters."""
        row = session.scalar(
            select(EdgeDeviceRow).where(
                EdgeDeviceRow.key_id == key_id,
                EdgeDeviceRow.device_id == device.id,
                EdgeDeviceRow.collection == collection,
            )
        )
        if row is None:
            row = EdgeDeviceRow(
                key_id=key_id,
                device_id=device.id,
                collection=collection,
                agent_version=device.agent_version,
                first_seen_at=now,
                last_seen_at=now,
                events=0,
            )
            session.add(row)
        row.agent_version = device.agent_version
        row.last_seen_at = now
        row.events = (row.events or 0) + events
        if queue is not None:
            row.queue_pending, row.queue_dropped, row.queue_dead = (
                queue.pending,
                queue.dropped,
                queue.dead,
            )
        if snapshot is not None:
            row.snapshot_sequence = snapshot

    # ------------------------------------------------------------------ snapshots

    def snapshot(
        self,
        *,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        ttl_s: int | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """The signed snapshot of ``collection`` for ``device`` (audited as an export)."""
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= MAX_TTL_S:
            raise InputError(f"ttl_s must be between 1 and {MAX_TTL_S}")
        info = self.gallery.collection(collection)
        consented = {p.id: p for p in self._persons(collection) if p.consent_valid}
        with tempfile.TemporaryDirectory(prefix="visage-edge-") as tmp:
            export = Path(tmp) / "export.jsonl"
            self.gallery.export_collection(
                collection, export, purpose=f"edge snapshot for device {device.id}", actor=key_id
            )
            lines = export.read_text("utf-8").splitlines()[1:]
        persons = []
        for line in lines:
            record = json.loads(line)
            person = consented.get(record["person"]["id"])
            vectors = [
                np.frombuffer(base64.b64decode(t["embedding"]), dtype="<f4").astype(np.float32)
                for t in record["templates"]
                if t["model_id"] == info.model_id
            ]
            if person is None or not vectors:
                continue
            persons.append(
                SnapshotPerson(
                    id=person.id,
                    display_name=person.display_name,
                    external_id=person.external_id,
                    consent_expires_at=_consent_end(person),
                    embeddings=np.stack(vectors),
                )
            )
        issued = now or utcnow()
        draft = Snapshot(
            collection=collection,
            model_id=info.model_id,
            dim=info.dim,
            sequence=0,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=ttl),
            calibration=self.gallery.calibration(info.model_id),
            persons=tuple(persons),
        )
        sequence = self._sequence(key_id, collection, device, draft.content_sha256(), issued)
        return sign_snapshot(replace(draft, sequence=sequence), self._key)

    def _persons(self, collection: str) -> list[PersonInfo]:
        page, offset, out = 1000, 0, []
        while True:
            batch = self.gallery.persons(collection, offset=offset, limit=page)
            out.extend(batch)
            if len(batch) < page:
                return out
            offset += page

    def _sequence(
        self, key_id: str, collection: str, device: DeviceInfo, digest: str, now: datetime
    ) -> int:
        """The sequence for this content: the latest one if unchanged, else the next."""
        with self._writing() as (session, _state):
            latest = session.scalar(
                select(EdgeSnapshotRow)
                .where(EdgeSnapshotRow.collection == collection)
                .order_by(EdgeSnapshotRow.sequence.desc())
                .limit(1)
            )
            if latest is not None and latest.content_sha256 == digest:
                sequence = latest.sequence
            else:
                sequence = (latest.sequence if latest else 0) + 1
                session.add(EdgeSnapshotRow(collection=collection, sequence=sequence,
                                            content_sha256=digest, created_at=now))
            self._touch(session, key_id, collection, device, now, snapshot=sequence)
            return sequence

    # ------------------------------------------------------------------ devices

    def devices(self, collections: frozenset[str] | None = None) -> list[DeviceRecord]:
        """Registered devices, most recently seen first (only ``collections`` when given)."""
        query = select(EdgeDeviceRow).order_by(EdgeDeviceRow.last_seen_at.desc(), EdgeDeviceRow.id)
        if collections is not None:
            query = query.where(EdgeDeviceRow.collection.in_(sorted(collections)))
        with self._reading() as session:
            return [DeviceRecord.from_row(r) for r in session.scalars(query)]

    def events_stored(self, collection: str) -> int:
        """How many events the collection holds (for tests and metrics)."""
        with self._reading() as session:
            count = session.scalar(
                select(func.count())
                .select_from(EdgeEventRow)
                .where(EdgeEventRow.collection == collection)
            )
            return int(count or 0)


def _consent_end(person: PersonInfo) -> datetime | None:
    """When the person's valid consent ends: ``None`` if any valid record is open-ended."""
    ends = [c.expires_at for c in person.consents if c.status == "valid"]
    if any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)
