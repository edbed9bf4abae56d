"""Audit events for what the server does outside a gallery method.

Gallery methods write their own events. A few calls touch biometric data without one — detect,
comparing two photos, grouping, an identify whose photo held no face — and key changes are
accountable too; this module appends their events to the same hash chain, following the
store's concurrency rule: lock the single state row first, then append, in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..gallery import audit
from ..gallery.store import lock_state, store_failure


@contextmanager
def transaction(sessions: sessionmaker[Session], what: str) -> Iterator[Session]:
    """A write transaction whose database errors become :class:`StorageError` naming ``what``."""
    try:
        with sessions() as session, session.begin():
            yield session
    except SQLAlchemyError as exc:
        raise store_failure(what, exc) from exc


def record_event(
    session: Session,
    action: str,
    *,
    actor: str,
    collection: str | None = None,
    purpose: str | None = None,
    input_hash: str | None = None,
    **summary: Any,
) -> int:
    """Append one event inside the caller's write transaction; returns its ``seq``.

    Call it before any other write of the transaction, so the state row is always the first
    lock taken (as every gallery writer does) and writers cannot deadlock.
    """
    state = lock_state(session)
    row = audit.append(
        session,
        state,
        actor=actor,
        action=action,
        collection=collection,
        purpose=purpose,
        input_hash=input_hash,
        summary=summary,
    )
    return row.seq


class EventLog:
    """Writes standalone events (one transaction each) to the store behind ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def record(
        self,
        action: str,
        *,
        actor: str,
        collection: str | None = None,
        purpose: str | None = None,
        input_hash: str | None = None,
        **summary: Any,
    ) -> int:
        """Append one event in its own transaction; returns its ``seq``."""
        with transaction(self._sessions, "audit log") as session:
            return record_event(
                session,
                action,
                actor=actor,
                collection=collection,
                purpose=purpose,
                input_hash=input_hash,
                **summary,
            )
