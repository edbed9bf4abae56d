"""The server's side of the edge: device registry, event ingestion, signed snapshots.

Rules, in one place (the HTTP routes in :mod:`visage.server.routes.edge` only translate):

- **Exactly once.** An event is stored once per (API key, device, idempotency key): a retry
  of an event already stored is answered ``duplicate`` with the stored outcome and changes
  nothing, and no device can pre-empt another's key (even when they share an API key). Which
  device ids a key may speak for is the key's (see :meth:`ApiKey.speaks_for`).
  A batch's events, their audit events and the device's last-seen row are written in one
  transaction, after the store's writer lock (the audit chain's state row), so a connection
  cut at any point leaves either all of a batch or none of it.
- **The server's figures, never the device's.** A device's claim of a person is re-scored
  with :meth:`Gallery.verify` against that person's current templates in the collection (the
  set a snapshot held is not recorded, and a deleted template must not be kept to check it);
  an event with no decision, an unknown, a claim the gallery refutes (beyond its threshold),
  or one naming a person no longer held with valid consent is identified here with
  :meth:`Gallery.identify`. The stored person and distance are the server's. Both calls are
  audited by the gallery.
- **Every device decision audited.** It is appended as ``edge.identify`` (device key as actor)
  in the transaction that stores the event, with the server's figures, the device's claim
  beside them and ``mismatch`` when they disagree. The probe embedding is never stored, only
  its sha256 — the gallery's rule for probes.
- **Crops only with consent.** A crop (validated on parse: a 150x150 JPEG chip) is kept only in
  a collection created with ``keep_images`` and only for a person the server identified who
  has valid consent when the event is stored; otherwise it is dropped. The gallery deletes a
  person's events (crops included) with the person or their consent, and a collection's
  events, devices and snapshot records with the collection.
- **Snapshots from the gallery's own rules.** A snapshot holds the persons the gallery says
  have valid consent now (:attr:`PersonInfo.consent_valid`), with the templates its export
  hands out (embeddings only, never images), the calibration it decides with, and the
  consent expiry. Its ``sequence`` increases whenever that content changes, so a deletion or
  revocation reaches a device at its next pull and an older snapshot cannot be replayed. A new
  sequence is at least the store's audit sequence, which never goes back, so a collection
  deleted and re-created under the same name never reissues a number its old snapshots used.
- **Devices.** A device is known by (key, device id, collection), with its agent version,
  first and last contact, events stored, the last snapshot it pulled and the queue state it
  last reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..edge.events import DeviceInfo, EdgeEvent, EventWire, Receipt
from ..edge.snapshot import DEFAULT_TTL_S, Snapshot, SnapshotPerson, sign_snapshot
from ..errors import ConsentError, InputError, NotFound, StorageError
from ..gallery import ConsentedTemplates, Gallery, PersonInfo
from ..signing import load_signing_key, public_key_text
from ..store import (
    EdgeDeviceRow,
    EdgeEventRow,
    EdgeSnapshotRow,
    audit,
    collection_named,
    sqlite_path,
    utcnow,
)

SIGNING_KEY_ENV = "VISAGE_EDGE_SIGNING_KEY"
MAX_TTL_S = 30 * 24 * 3600
"""The longest lifetime a request may name; the hub's ``max_ttl_s`` policy caps what it grants."""
SNAPSHOT_ATTEMPTS = 5
"""Reads of a collection that keeps changing before a snapshot request gives up (503)."""
DISTANCE_TOLERANCE = 1e-4
"""Device and server figures further apart than this are a mismatch: the device sends distances
rounded to 6 decimals from the same float32 templates, so an honest, current snapshot agrees
to ~1e-6; a stale snapshot (templates added or deleted since) can disagree too."""


@dataclass(frozen=True)
class _Figures:
    """The server's answer for one event: the person, the distance, and its audit event."""

    person_id: str | None
    distance: float | None
    audit_seq: int


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
    """Edge devices' business with the server, over the gallery and its store."""

    def __init__(
        self,
        gallery: Gallery,
        signing_key: Ed25519PrivateKey,
        *,
        default_ttl_s: int = DEFAULT_TTL_S,
        max_ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        self.gallery = gallery
        self.store = gallery.store
        self._key = signing_key
        self.max_ttl_s = max_ttl_s
        self.default_ttl_s = min(default_ttl_s, max_ttl_s)

    @classmethod
    def open(cls, gallery: Gallery, *, max_ttl_s: int = DEFAULT_TTL_S) -> EdgeHub:
        """A hub whose signing key is found (or, beside a SQLite store, created) per
        :func:`signing_key_path`, granting snapshots at most ``max_ttl_s`` of life."""
        path = signing_key_path(gallery.url)
        key = load_signing_key(path, create=SIGNING_KEY_ENV not in os.environ)
        return cls(gallery, key, max_ttl_s=max_ttl_s)

    def public_key(self) -> str:
        return public_key_text(self._key.public_key())

    def _reading(self) -> AbstractContextManager[Session]:
        return self.store.read("edge store")

    # ------------------------------------------------------------------ events

    def ingest(
        self,
        *,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        events: Sequence[EventWire],
        queue: QueueReport | None = None,
    ) -> list[Receipt]:
        """Store a batch of uploaded events exactly once each; one receipt per event, in order."""
        info = self.gallery.collection(collection)
        parsed: list[EdgeEvent | Receipt] = []
        for doc in events:
            parsed.append(self._check(doc, device, info.dim, info.model_id))
        fresh = [e for e in parsed if isinstance(e, EdgeEvent)]
        known = self._stored(key_id, device.id, [e.key for e in fresh])
        unseen = {e.key: e for e in reversed(fresh) if e.key not in known}  # first of each key
        purpose = f"edge device {device.id}"
        server_side = {
            event.key: self._server_figures(collection, event, purpose, key_id)
            for event in unseen.values()
        }
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

    def _server_figures(
        self, collection: str, event: EdgeEvent, purpose: str, key_id: str
    ) -> _Figures:
        """The server's own answer for ``event``, never the device's figures: a device's claim
        of a person is checked with :meth:`Gallery.verify` against that person's current
        templates (the snapshot's set is not recorded); anything else — no decision, unknown,
        a claim the gallery refutes, or a person no longer held with valid consent — is
        identified here with :meth:`Gallery.identify`. Both are audited by the gallery."""
        claim = event.decision
        if claim is not None and claim.person_id is not None:
            try:
                checked = self.gallery.verify(
                    collection, claim.person_id, event.embedding, purpose=purpose, actor=key_id
                )
            except (NotFound, ConsentError):
                checked = None
            if checked is not None and checked.same:
                return _Figures(checked.person_id, checked.distance, checked.audit_seq)
        found = self.gallery.identify(
            collection, event.embedding, k=1, purpose=purpose, actor=key_id
        )
        nearest = found.candidates[0] if found.candidates else None
        return _Figures(
            found.best.person_id if found.best else None,
            nearest.distance if nearest else None,
            found.audit_seq,
        )

    @staticmethod
    def _check(
        wire: EventWire, device: DeviceInfo, dim: int, model_id: str
    ) -> EdgeEvent | Receipt:
        key = wire.key
        try:
            event = EdgeEvent.from_wire(wire, dim=dim)
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

    def _stored(self, key_id: str, device_id: str, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        with self._reading() as session:
            found = session.scalars(
                select(EdgeEventRow.event_key).where(*_same_event(key_id, device_id, keys))
            )
            return set(found)

    def _store(
        self,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        events: Sequence[EdgeEvent],
        server_side: dict[str, _Figures],
        purpose: str,
        queue: QueueReport | None,
    ) -> list[Receipt]:
        """One receipt per event, in order; a key seen before (stored, or earlier in this
        batch) is a duplicate carrying the stored outcome.

        Under the writer lock, so no deletion can slip in between: the collection must still
        exist, a person is recorded only while they still have valid consent, and a crop is
        kept only for such a person in a collection created with ``keep_images``."""
        receipts: dict[str, Receipt] = {}
        out: list[Receipt] = []
        now = utcnow()
        keys = [e.key for e in events]
        with self.store.write("edge store") as w:
            session = w.session
            # read under the writers' lock, so no edge row outlives the collection's deletion
            coll = collection_named(session, collection)
            named = {f.person_id for f in server_side.values() if f.person_id is not None}
            consented = Gallery.consented_ids(session, collection, named, now)
            rows = session.scalars(
                select(EdgeEventRow).where(*_same_event(key_id, device.id, keys))
            )
            existing = {row.event_key: row for row in rows} if keys else {}
            for event in events:
                if event.key in existing or event.key in receipts:
                    row, first = existing.get(event.key), receipts.get(event.key)
                    person = row.person_id if row else first.person_id if first else None
                    out.append(Receipt(event.key, "duplicate", person))
                    continue
                figures = server_side[event.key]
                if figures.person_id is not None and figures.person_id not in consented:
                    figures = _Figures(None, None, figures.audit_seq)  # deleted meanwhile
                crop = event.crop_jpeg if coll.keep_images and figures.person_id else None
                seq, by = self._outcome(
                    w, key_id, collection, event, figures, purpose, crop is not None
                )
                session.add(
                    EdgeEventRow(
                        key_id=key_id, event_key=event.key, collection=collection,
                        device_id=device.id, track=event.track, first_seen=event.first_seen,
                        last_seen=event.last_seen, detections=event.detections,
                        quality=event.quality, embedding_sha256=event.embedding_sha256,
                        person_id=figures.person_id, distance=figures.distance, decided_by=by,
                        snapshot_sequence=event.decision.snapshot if event.decision else None,
                        crop=crop, audit_seq=seq, received_at=now,
                    )
                )
                receipts[event.key] = Receipt(event.key, "stored", figures.person_id)
                out.append(receipts[event.key])
            self._touch(session, key_id, collection, device, now, events=len(receipts),
                        queue=queue)
        return out

    @staticmethod
    def _outcome(
        w: audit.Write,
        key_id: str,
        collection: str,
        event: EdgeEvent,
        figures: _Figures,
        purpose: str,
        crop: bool,
    ) -> tuple[int, str]:
        """(audit seq, who decided). A device decision is audited here as ``edge.identify``
        with the server's figures beside the device's, and ``mismatch`` when they disagree
        (another person, or distances more than :data:`DISTANCE_TOLERANCE` apart)."""
        claim = event.decision
        if claim is None:
            return figures.audit_seq, "server"
        agrees = figures.person_id == claim.person_id
        mismatch = not agrees or (
            claim.distance is not None
            and figures.distance is not None
            and abs(claim.distance - figures.distance) > DISTANCE_TOLERANCE
        )
        seq = w.record(
            "edge.identify",
            actor=key_id,
            collection=collection,
            purpose=purpose,
            input_hash=event.embedding_sha256,
            device=event.device_id,
            event=event.key,
            track=event.track,
            person=figures.person_id,
            unknown=figures.person_id is None,
            distance=None if figures.distance is None else round(figures.distance, 6),
            server_audit=figures.audit_seq,
            mismatch=mismatch,
            device_person=claim.person_id,
            device_distance=claim.distance,
            device_threshold=claim.threshold,
            snapshot=claim.snapshot,
            crop=crop,
            first_seen=event.first_seen.isoformat(),
            last_seen=event.last_seen.isoformat(),
        )
        return seq, "device" if agrees else "server"

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
        """The signed snapshot of ``collection`` for ``device`` (audited as an export), valid
        ``ttl_s`` seconds but never longer than the hub's ``max_ttl_s``: the requester does not
        choose how long a deleted person stays matchable offline."""
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= MAX_TTL_S:
            raise InputError(f"ttl_s must be between 1 and {MAX_TTL_S}")
        ttl = min(ttl, self.max_ttl_s)
        for _attempt in range(SNAPSHOT_ATTEMPTS):
            read = self.gallery.consented_templates(
                collection, purpose=f"edge snapshot for device {device.id}", actor=key_id
            )
            draft = self._draft(read, ttl, now or utcnow())
            sequence = self._sequence(
                key_id, collection, device, draft.content_sha256(), draft.issued_at, read.version
            )
            if sequence is not None:
                return sign_snapshot(replace(draft, sequence=sequence), self._key)
        raise StorageError(
            f"collection {collection!r} changed during each of {SNAPSHOT_ATTEMPTS} snapshot "
            "reads; retry"
        )

    def _draft(self, read: ConsentedTemplates, ttl: int, issued: datetime) -> Snapshot:
        """The unsigned snapshot (sequence 0) of what ``read`` holds, valid ``ttl`` seconds."""
        info = read.collection
        persons = [
            SnapshotPerson(
                id=p.person.id,
                display_name=p.person.display_name,
                external_id=p.person.external_id,
                consent_expires_at=_consent_end(p.person),
                embeddings=p.embeddings,
            )
            for p in read.persons
        ]
        # The device decides 1:N offline: the threshold holding the collection's target FPIR
        # at the snapshot's own size, by the gallery's identify rule.
        templates = sum(len(p.embeddings) for p in persons)
        point = self.gallery.operating_point(
            info.model_id, info.target_fpir, templates, len(persons), own=read.open_set
        )
        calibration = replace(
            self.gallery.calibration(info.model_id),
            threshold=point.threshold,
            method=f"open-set {point.basis}",
            source=point.describe(),
        )
        return Snapshot(
            collection=info.name,
            model_id=info.model_id,
            dim=info.dim,
            sequence=0,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=ttl),
            calibration=calibration,
            persons=tuple(persons),
            operating_point=point,
        )

    def _sequence(
        self,
        key_id: str,
        collection: str,
        device: DeviceInfo,
        digest: str,
        now: datetime,
        version: int,
    ) -> int | None:
        """The sequence for this content: the latest one if unchanged, else the next (see the
        module's rules); ``None`` when the collection moved past ``version`` (the content was
        read from) before the writers' lock was taken, so stale content never gets a newer
        sequence; :class:`NotFound` if the collection was deleted meanwhile."""
        with self.store.write("edge store") as w:
            session, state = w.session, w.state
            if collection_named(session, collection).version != version:
                return None
            latest = session.scalar(
                select(EdgeSnapshotRow)
                .where(EdgeSnapshotRow.collection == collection)
                .order_by(EdgeSnapshotRow.sequence.desc())
                .limit(1)
            )
            if latest is not None and latest.content_sha256 == digest:
                sequence = latest.sequence
            else:
                sequence = max((latest.sequence if latest else 0) + 1, state.audit_seq)
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


def _same_event(key_id: str, device_id: str, keys: Sequence[str]) -> tuple[Any, ...]:
    """The idempotency rule in SQL: an event is the same when key, device and event key are."""
    return (
        EdgeEventRow.key_id == key_id,
        EdgeEventRow.device_id == device_id,
        EdgeEventRow.event_key.in_(list(keys)),
    )


def _consent_end(person: PersonInfo) -> datetime | None:
    """When the person's valid consent ends: ``None`` if any valid record is open-ended."""
    ends = [c.expires_at for c in person.consents if c.status == "valid"]
    if any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)
