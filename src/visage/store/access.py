"""``Store``: the one handle a process holds on its store, shared by every part that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .engine import open_engine, snapshot_reader, store_failure


class Store:
    """An open store: the process's one engine (one pool; migrations checked once), and the
    two ways in — :meth:`write`, the one audited write path, and :meth:`read`, a read-only
    snapshot without the writers' lock. The gallery, the key store, the server's event log and
    the edge hub all receive the same ``Store``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writers = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(snapshot_reader(engine), expire_on_commit=False)

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

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()
