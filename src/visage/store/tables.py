"""Every table of the store, gallery, API keys and edge, as SQLAlchemy 2 typed models.

Concurrency rule: every transaction that changes anything first locks the single
:class:`StateRow` (``SELECT … FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` takes the file's
write lock on SQLite), through :func:`visage.store.audit.write`. Writers are therefore
serialised, which is what makes the audit hash chain linear and lets a writer trust a
collection's ``version`` for the whole transaction. Readers take no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import NotFound

MAX_INTEGER = 2**31 - 1
"""The largest value an ``Integer`` column holds on every supported store (PostgreSQL's
INTEGER is 32 bits; SQLite's is 64): the bound for audit seqs and row ids taken from a
request, so a larger one is refused as input rather than failing in the database."""


def utcnow() -> datetime:
    """Now, timezone-aware UTC (the only kind of time the store hands out)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; stored naive UTC on every backend.

    Storing one form everywhere keeps SQLite's text comparisons and PostgreSQL's timestamp
    comparisons in agreement (consent expiry is decided in SQL).
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every gallery table."""


class StateRow(Base):
    """The single row every writer locks first; it also anchors the audit chain's head."""

    __tablename__ = "gallery_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str] = mapped_column(String(64))


@dataclass
class ChainHead:
    """The audit chain's head as a write transaction holds it, read from the locked state row;
    :func:`visage.store.audit.write` stores it back with one UPDATE if events were appended. A
    plain object rather than the ORM row: loading and flushing that cost more than the event's
    own INSERT."""

    audit_seq: int
    audit_head: str


_LOCK_STATE = (
    select(StateRow.audit_seq, StateRow.audit_head).where(StateRow.id == 1).with_for_update()
)


def lock_state(session: Session) -> ChainHead:
    """Take the store's writer lock — the state row — as the first lock of a write transaction,
    so gallery, server and edge writers queue in one order and never deadlock."""
    row = session.execute(_LOCK_STATE).one()
    return ChainHead(row.audit_seq, row.audit_head)


class CollectionRow(Base):
    """An isolated gallery (a tenant). ``version`` counts template changes, for the index.

    It starts at the audit sequence of the creating transaction: every change bumps it in a
    transaction that also writes an audit event, so a collection that reuses a deleted one's id
    (SQLite reuses the highest rowid) never reaches a version the deleted one had, and an index
    or snapshot of the deleted one never passes for the new one's.
    """

    __tablename__ = "collection"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_id: Mapped[str] = mapped_column(String(100))
    dim: Mapped[int] = mapped_column(Integer)
    keep_images: Mapped[bool] = mapped_column(default=False)
    target_fpir: Mapped[float] = mapped_column(Float, default=0.01)
    open_set: Mapped[str | None] = mapped_column(Text, default=None)
    """The collection's own open-set calibration (JSON); ``None``: the model's shipped one."""
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


_COLLECTION_NAMED = select(CollectionRow).where(CollectionRow.name == bindparam("name"))
"""Built once: every search looks its collection up, and building the select per call cost
about as much as running it."""


def collection_named(session: Session, name: str) -> CollectionRow:
    """The collection called ``name`` in ``session``'s view of the store; :class:`NotFound`
    if there is none."""
    row = session.scalar(_COLLECTION_NAMED, {"name": name})
    if row is None:
        raise NotFound(f"no collection named {name!r}")
    return row


class PersonRow(Base):
    """A person in one collection; ``id`` is a random hex uuid, ``external_id`` the caller's own."""

    __tablename__ = "person"
    __table_args__ = (UniqueConstraint("collection_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collection.id", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(300))
    external_id: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsentRow(Base):
    """A consent record: the legal basis for holding a person's templates, and its life span."""

    __tablename__ = "consent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    basis: Mapped[str] = mapped_column(String(40))
    purpose: Mapped[str | None] = mapped_column(String(300))
    granted_by: Mapped[str] = mapped_column(String(300))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(300))
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class TemplateRow(Base):
    """One enrolled face: the embedding (float32 bytes), never the probe or, by default, the image."""

    __tablename__ = "template"
    __table_args__ = (
        UniqueConstraint("person_id", "source_sha256"),
        Index("ix_template_collection_id", "collection_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collection.id", ondelete="CASCADE"))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model_id: Mapped[str] = mapped_column(String(100))
    quality: Mapped[float | None] = mapped_column(Float)
    source_sha256: Mapped[str] = mapped_column(String(64))
    image: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditRow(Base):
    """One audit event; ``hash`` covers every other column, including ``prev_hash``.

    Indexed for :func:`visage.store.audit.events`' filters: ``at`` for a since / until window
    (a range on it), ``(actor, seq)`` for one key's events newest first (read in ``seq`` order
    off the index, no sort), ``collection`` for one collection's.
    """

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_actor", "actor", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(60))
    collection: Mapped[str | None] = mapped_column(String(200), index=True)
    purpose: Mapped[str | None] = mapped_column(String(300))
    input_hash: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class EdgeDeviceRow(Base):
    """A device as the server last saw it (the edge hub's registry; gone with its collection)."""

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
    """One stored edge event (its probe embedding is not kept, only the hash). ``crop`` only for
    a consented person of a ``keep_images`` collection; the row goes with its person's deletion,
    consent revocation or the collection (:class:`~visage.gallery.Gallery`)."""

    __tablename__ = "edge_event"
    # Idempotent per device: a device sharing a key cannot pre-empt another's event key (0006).
    __table_args__ = (
        UniqueConstraint("key_id", "device_id", "event_key", name="uq_edge_event_device_key"),
    )

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
    """A snapshot sequence number issued for a collection and the content it stands for (gone
    with the collection)."""

    __tablename__ = "edge_snapshot"
    __table_args__ = (UniqueConstraint("collection", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(200))
    sequence: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKeyRow(Base):
    """One API key of the server (:mod:`visage.server.keys_store`): its public id, the hash of
    its token, and what it may do."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    collections: Mapped[list[str]] = mapped_column(JSON)
    rate_limit: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    devices: Mapped[list[str] | None] = mapped_column(JSON)


