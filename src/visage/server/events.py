"""Audit events for what the server does outside a gallery method.

Gallery methods write their own events. A few calls touch biometric data without one — detect,
comparing two photos, grouping, an identify whose photo held no face — and key changes are
accountable too; this module appends their events to the same hash chain through the store's
one audited write path (:func:`visage.store.audit.write`).
"""

from __future__ import annotations

from typing import Any

from ..store import Store


class EventLog:
    """Writes standalone events (one transaction each) to ``store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

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
        with self._store.write("audit log") as w:
            return w.record(
                action,
                actor=actor,
                collection=collection,
                purpose=purpose,
                input_hash=input_hash,
                **summary,
            )
