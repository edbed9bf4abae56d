"""The store: every table, the engine, the files on disk, and the one audited write path.

access.py   ``Store``: the one handle on a store (engine, the write path, snapshot reads)
tables.py   every table (gallery, API keys, edge) as SQLAlchemy 2 typed models; the writers' lock
engine.py   URLs, SQLite pragmas, read-only snapshot readers, opening and migrating a store
files.py    owner-only files, safe temporary files, erasing SQLite's write-ahead log
audit.py    the hash-chained audit log and :func:`~visage.store.audit.write`, the one write path
anchor.py   signed checkpoints of the chain's head kept outside the database
migrations/ Alembic revisions, kept in step with ``tables.py`` (a test compares them)

The gallery service, the server's key store and event log and the edge hub all open their
store here and write through :func:`visage.store.audit.write`; one engine per process.
"""

from __future__ import annotations

from .access import Store
from .engine import (
    DEFAULT_DB,
    Migration,
    database_url,
    default_url,
    migrate,
    migrate_store,
    open_engine,
    shown_url,
    snapshot_reader,
    store_failure,
)
from .files import (
    BUSY_TIMEOUT_S,
    PRIVATE_DIR,
    PRIVATE_FILE,
    JournalEraser,
    erase_journal,
    open_private,
    private_dir,
    private_temporary,
    sqlite_path,
)
from .tables import (
    MAX_INTEGER,
    ApiKeyRow,
    AuditRow,
    Base,
    ChainHead,
    CollectionRow,
    ConsentRow,
    EdgeDeviceRow,
    EdgeEventRow,
    EdgeSnapshotRow,
    PersonRow,
    StateRow,
    TemplateRow,
    UTCDateTime,
    collection_named,
    lock_state,
    utcnow,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "DEFAULT_DB",
    "MAX_INTEGER",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "ApiKeyRow",
    "AuditRow",
    "Base",
    "ChainHead",
    "CollectionRow",
    "ConsentRow",
    "EdgeDeviceRow",
    "EdgeEventRow",
    "EdgeSnapshotRow",
    "JournalEraser",
    "Migration",
    "PersonRow",
    "StateRow",
    "Store",
    "TemplateRow",
    "UTCDateTime",
    "collection_named",
    "database_url",
    "default_url",
    "erase_journal",
    "lock_state",
    "migrate",
    "migrate_store",
    "open_engine",
    "open_private",
    "private_dir",
    "private_temporary",
    "shown_url",
    "snapshot_reader",
    "sqlite_path",
    "store_failure",
    "utcnow",
]
