"""``Store``: the one handle a process holds on its store, shared by every part that uses it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .engine import open_engine, snapshot_reader, store_failure
from .files import PRIVATE_FILE, sqlite_path


class Store:
    """An open store: the process's one engine (one pool; migrations checked once), and the
    two ways in — :meth:`write`, the one audited write path, and :meth:`read`, a read-only
    snapshot without the writers' lock. The gallery, the key store, the server's event log and
    the edge hub all receive the same ``Store``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writers = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(snapshot_reader(engine), expire_on_commit=False)
        self._file = sqlite_path(engine.url.render_as_string(hide_password=False))
        self._local = threading.Lock()  # in-memory SQLite: one process, so a thread lock

    @classmethod
    def open(cls, url: str, *, anchors: str | Path | None = None, create: bool = True) -> Store:
        """Open (and migrate, when behind and allowed) the store at ``url``."""
        return cls(open_engine(url, anchors=anchors, create=create))

    def write(self, what: str) -> AbstractContextManager[audit.Write]:
        """:func:`visage.store.audit.write` on this store; ``what`` names it in errors."""
        return audit.write(self._writers, what)

    @contextmanager
    def read(self, what: str) -> Iterator[Session]:
        """A read-only transaction on one consistent snapshot, without the writers' lock;
        database errors become :class:`~visage.errors.StorageError` naming ``what``."""
        try:
            with self._readers() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise store_failure(what, exc) from exc

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold ``name`` against every thread and process on this store while a change outside
        it is made that must not interleave with another's (a shared Milvus index's rebuild or
        partition rewrite). Not the writers' lock: writers and searches go on meanwhile.
        PostgreSQL: a session advisory lock; a SQLite file: ``flock`` on ``<file>-lock``."""
        if self.engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        elif self._file is not None:
            lock = self._file.with_name(self._file.name + "-lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one lock for every name: they are rare
                yield
            finally:
                os.close(fd)  # releases the lock
        else:
            with self._local:
                yield

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()
