"""The store's engine: URLs, SQLite pragmas, read-only snapshot readers, and migrations.

Opening a store whose schema is at the newest revision only reads ``alembic_version``, so a
service role without DDL rights can open it; a store that is behind is migrated on open when
the role may, else opening fails naming ``visage migrate`` (:func:`migrate_store`), which the
database's owner runs once per upgrade (docs/gallery.md, "PostgreSQL roles").

The store is the source of truth; the vector index is rebuilt from it whenever they disagree.
A SQLite file is the default (embedded, zero set-up); PostgreSQL is used by URL
(``postgresql+psycopg://user@host/db``).

Readers take no lock: :func:`snapshot_reader` transactions see one consistent snapshot.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..errors import NotFound, StorageError
from . import anchor

DEFAULT_DB = Path("~/.local/share/visage/visage.db")
from .files import BUSY_TIMEOUT_S, PRIVATE_FILE, private_dir, sqlite_path

log = logging.getLogger(__name__)

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


def store_failure(what: str, exc: SQLAlchemyError) -> StorageError:
    """The error callers see when a statement fails: the driver's message (the SQL text and
    its parameters) goes to the log only, never into an answer or a CLI message."""
    log.error("%s error: %s", what, exc)
    return StorageError(f"{what} error ({type(exc).__name__}); the details are in the server log")


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


def _migrations_config(engine: Engine) -> Config:
    cfg = Config()
    location = resources.files("visage.store").joinpath("migrations")
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
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        raise StorageError(
            f"the schema of {shown_url(engine.url)} is at revision {current}, which this Visage "
            f"does not know (it knows up to {head}): a newer Visage migrated it; run that version"
        )
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
    (``anchors``, else :func:`visage.store.anchor.anchor_file`'s default), when there is one.
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
