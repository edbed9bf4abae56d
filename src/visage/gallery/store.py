"""The store: SQLAlchemy 2 typed models of every table (gallery, API keys, edge), the engine, and migrations.

Opening a store whose schema is at the newest revision only reads ``alembic_version``, so a
service role without DDL rights can open it; a store that is behind is migrated on open when
the role may, else opening fails naming ``visage migrate`` (:func:`migrate_store`), which the
database's owner runs once per upgrade (docs/gallery.md, "PostgreSQL roles").

The store is the source of truth; the vector index is rebuilt from it whenever they disagree.
A SQLite file is the default (embedded, zero set-up); PostgreSQL is used by URL
(``postgresql+psycopg://user@host/db``).

Concurrency rule: every transaction that changes anything first locks the single
:class:`StateRow` (``SELECT … FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` takes the file's
write lock on SQLite). Writers are therefore serialised, which is what makes the audit hash
chain linear and lets a writer trust a collection's ``version`` for the whole transaction.
Readers take no lock: :func:`snapshot_reader` transactions see one consistent snapshot.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from ..errors import InputError, NotFound, StorageError
from . import anchor

DEFAULT_DB = Path("~/.local/share/visage/visage.db")
log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
"""Mode of every file the store writes (database, snapshots, exports): owner only."""
PRIVATE_DIR = 0o700
"""Mode of every folder the store creates (the database's folder, the index folder)."""

MAX_INTEGER = 2**31 - 1
"""The largest value an ``Integer`` column holds on every supported store (PostgreSQL's
INTEGER is 32 bits; SQLite's is 64): the bound for audit seqs and row ids taken from a
request, so a larger one is refused as input rather than failing in the database."""


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents owner-only (:data:`PRIVATE_DIR`); folders that
    exist are left as they are."""
    for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def open_private(path: Path) -> IO[bytes]:
    """``path`` opened for writing, truncated and owner-only (:data:`PRIVATE_FILE`), even when a
    file of looser mode was already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def private_temporary(dest: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """A new owner-only file beside ``dest`` (the same folder, so it can be renamed over
    ``dest``), yielded with its path and open for writing; removed if the block fails.

    Its name is random and it is opened ``O_CREAT | O_EXCL | O_NOFOLLOW``: whatever already
    lies in a shared folder (a link planted at ``dest.tmp``) is never written through.
    :class:`InputError` when the folder cannot take it (missing, not writable).
    """
    path = dest.with_name(f"{dest.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield path, fh
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def default_url() -> str:
    """``$VISAGE_DB`` (a URL or a file path) or the SQLite file ``~/.local/share/visage/visage.db``."""
    return database_url(os.environ.get("VISAGE_DB") or str(DEFAULT_DB.expanduser()))


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for ``target``: URLs pass through, file paths become SQLite URLs."""
    text = str(target)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def shown_url(url: str | URL) -> str:
    """``url`` as it may be shown to a user: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for in-memory SQLite and other backends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def store_failure(what: str, exc: SQLAlchemyError) -> StorageError:
    """The error callers see when a statement fails: the driver's message (the SQL text and
    its parameters) goes to the log only, never into an answer or a CLI message."""
    log.error("%s error: %s", what, exc)
    return StorageError(f"{what} error ({type(exc).__name__}); the details are in the server log")


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


def lock_state(session: Session) -> StateRow:
    """Take the store's writer lock — the state row — as the first lock of a write transaction,
    so gallery, server and edge writers queue in one order and never deadlock."""
    return session.execute(select(StateRow).where(StateRow.id == 1).with_for_update()).scalar_one()


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
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


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
    """One audit event; ``hash`` covers every other column, including ``prev_hash``."""

    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))
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


BUSY_TIMEOUT_S = 30
"""How long a SQLite connection waits for another's lock before it fails."""


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL + full sync + foreign keys + secure delete, and ``BEGIN IMMEDIATE`` so writers queue.

    pysqlite's own transaction handling is switched off (``isolation_level = None``) and the
    ``begin`` event issues the BEGIN, the documented SQLAlchemy recipe.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        # deleted templates are zeroed, not left in free pages
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(
            "BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE"
        )


_READ_ONLY = "visage_read_only"


def snapshot_reader(engine: Engine) -> Engine:
    """``engine``'s pool for read-only transactions that see one consistent snapshot and take no
    writers' lock: a deferred ``BEGIN`` on SQLite (in WAL mode a reader neither waits for nor
    blocks the writer), ``REPEATABLE READ, READ ONLY`` on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_READ_ONLY: True})
    return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


def erase_journal(engine: Engine, *, wait_s: float = BUSY_TIMEOUT_S) -> bool:
    """Copy SQLite's write-ahead log into the database file and truncate it to zero bytes;
    ``False`` when readers still held it after ``wait_s``.

    Called after a transaction that erased biometric data commits: ``secure_delete`` zeroes the
    rows in the file, but the ``-wal`` keeps earlier images of their pages until it is truncated,
    which SQLite can only do once no reader holds a snapshot from before. It answers at once
    while another connection (another process's erasure or automatic checkpoint) is
    checkpointing, so this retries every 10 ms. ``True`` at once for in-memory SQLite and other
    backends; :class:`StorageError` when the database fails.
    """
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None:
        return True
    deadline = time.monotonic() + wait_s
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(min(wait_s, BUSY_TIMEOUT_S) * 1000)}")
            try:
                while cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.01)
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        finally:
            raw.close()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise StorageError(f"the erasure is committed, but {path.name}-wal was not truncated: {exc}") from exc
    return True


class JournalEraser:
    """Truncates the write-ahead log after each erasure, at once when no reader is open, else
    the moment the readers that predate it are gone.

    A read that began before the erasure (an export, an edge snapshot, a search) still sees the
    erased rows, so their old page images must stay in the ``-wal`` until it ends. An erasure
    waits up to ``WAIT_S`` for such readers, then hands the truncation to one background thread
    that retries until it succeeds; :meth:`close` makes a last attempt and reports a failure.
    """

    WAIT_S = 2.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def erase(self) -> None:
        """Truncate now, or as soon as the readers from before this erasure are gone."""
        if erase_journal(self._engine, wait_s=self.WAIT_S):
            return
        log.warning("a reader holds the write-ahead log: it is truncated as soon as it ends")
        with self._lock:
            self._pending.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._sweep, name="visage-wal", daemon=True)
                self._thread.start()

    @property
    def pending(self) -> bool:
        """Whether an erasure still waits for readers to end."""
        return self._pending.is_set()

    def _sweep(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._pending.is_set():
                    self._thread = None
                    return
                self._pending.clear()
            try:
                done = erase_journal(self._engine, wait_s=1.0)
            except StorageError as exc:
                log.error("%s", exc)
                done = False
            if not done:
                self._pending.set()
                self._stop.wait(0.05)

    def close(self) -> None:
        """Stop the background retries and truncate once more; :class:`StorageError` when an
        erasure's old page images could not be removed."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        if self._pending.is_set() and not erase_journal(self._engine):
            path = sqlite_path(self._engine.url.render_as_string(hide_password=False))
            raise StorageError(
                f"{path.name if path else 'the store'}-wal still holds erased data: a reader "
                "kept it open past shutdown"
            )


def _migrations_config(engine: Engine) -> Config:
    cfg = Config()
    location = resources.files("visage.gallery").joinpath("migrations")
    cfg.set_main_option("script_location", str(location))
    cfg.attributes["engine"] = engine
    return cfg


@dataclass(frozen=True)
class Migration:
    """What :func:`migrate` found and did: the revision ``before`` (``None``: an empty
    database), the ``head`` it brought the schema to, and the revisions ``applied``, oldest
    first (none when the schema was current)."""

    before: str | None
    head: str
    applied: tuple[str, ...]


def migrate(engine: Engine) -> Migration:
    """Bring the schema to the newest Alembic revision.

    When it is current this only reads ``alembic_version`` (no DDL, no write), so a role with
    no rights on the schema may open the store. When it is behind and the upgrade fails (the
    role may not ``CREATE``/``ALTER``, most often) :class:`StorageError` says so and names
    ``visage migrate``; the upgrade is one transaction on PostgreSQL, so nothing half-applied
    is left.
    """
    cfg = _migrations_config(engine)
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    if head is None:
        raise StorageError("no schema revisions are installed with Visage")
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return Migration(current, head, ())
    pending = tuple(r.revision for r in script.iterate_revisions(head, current))[::-1]
    try:
        command.upgrade(cfg, "head")
    except DBAPIError as exc:
        why = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise StorageError(
            f"the schema of {shown_url(engine.url)} is at revision {current or 'none'} and this "
            f"Visage needs {head}, but it could not be migrated ({why}); run `visage migrate "
            "--db URL` once as the role that owns the database"
        ) from exc
    log.info("migrated %s from %s to %s", shown_url(engine.url), current or "nothing", head)
    return Migration(current, head, pending)


def migrate_store(url: str) -> Migration:
    """Bring the store at ``url`` to the newest schema and say what was done (``visage
    migrate``): run once per upgrade by the database's owner, so the service's own role needs
    no DDL rights. Idempotent: on a current store it applies nothing."""
    engine = _engine(url, create=True)
    try:
        return migrate(engine)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate gallery store {shown_url(url)}: {exc}") from exc
    finally:
        engine.dispose()


def _create_private(path: Path) -> None:
    """Create a missing SQLite file (and its folder) owner-only; SQLite gives its ``-wal`` and
    ``-shm`` the database file's mode, so they are owner-only too."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def _engine(url: str, *, create: bool) -> Engine:
    """An engine for ``url``, schema unchecked; see :func:`open_engine` for ``create``."""
    path = sqlite_path(url)
    if not create and path is not None and not path.exists():
        raise NotFound(
            f"no gallery store at {path} (none is created to read from; "
            "name the store with --db or VISAGE_DB)"
        )
    try:
        if make_url(url).get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        if path is not None:
            _create_private(path)
            engine = create_engine(url)
        else:
            engine = create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        _sqlite_pragmas(engine)
        return engine
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot open gallery store {shown_url(url)}: {exc}") from exc


def open_engine(url: str, *, anchors: str | Path | None = None, create: bool = True) -> Engine:
    """An engine for ``url`` with the schema migrated; a new SQLite file and its folder are
    created owner-only (0600, 0700). With ``create`` false a missing SQLite file is
    :class:`NotFound` instead: a read-only command never leaves an empty store behind.

    Every transaction on it that appends audit events is checkpointed to the anchor file
    (``anchors``, else :func:`visage.gallery.anchor.anchor_file`'s default), when there is one.
    Raises :class:`StorageError` when the database cannot be reached or migrated (a schema
    behind the code, opened by a role that may not change it, names ``visage migrate``).
    """
    engine = _engine(url, create=create)
    try:
        migrate(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot open gallery store {shown_url(url)}: {exc}") from exc
    anchors_path = anchor.anchor_file(sqlite_path(url), anchors)
    if anchors_path is not None:
        anchor.attach(engine, anchor.AuditAnchor.open(anchors_path))
    return engine
