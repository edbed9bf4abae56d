"""The agent's durable outbox: a SQLite file (WAL, ``synchronous=FULL``) of events to upload.

An event is committed here before any upload is tried, and leaves only when the server has
acknowledged it (stored or already stored). A crash, a SIGKILL or a power cut therefore loses
nothing that :meth:`EventQueue.put` returned for: WAL with a full sync makes each commit
durable, and a restarted agent simply uploads what is still here. Keys are the events'
idempotency keys, so uploading one twice is harmless (the server deduplicates).

**When full.** The queue holds at most ``max_events`` events and ``max_bytes`` of payload
(counted exactly; SQLite's own pages add a few percent on disk, returned to the file system
by incremental vacuum as events leave). Past either cap the policy decides:

- ``drop-oldest`` (default): the oldest pending events are deleted to make room. A device cut
  off for weeks keeps the most recent activity, which is what a door or a desk needs; the
  number dropped is counted (:attr:`QueueStats.dropped`) and logged, so the loss is visible.
- ``refuse-new``: :meth:`EventQueue.put` raises :class:`QueueFull` and the event is not
  stored; the agent logs and counts it. For deployments where the first events matter most.

Events the server refused outright (malformed, say) are kept aside as ``dead`` with the reason,
never retried, and count towards the caps until :meth:`EventQueue.purge_dead` (``visage edge
purge``) or until they have been dead for ``dead_retention_s`` (7 days by default).

**Expiry.** An event may be put with an expiry time (the agent does this for strangers when the
operator opted in to queueing them); past it the event is never uploaded and
:meth:`EventQueue.expire` deletes it. Deleted rows are overwritten (``secure_delete``) and the
write-ahead log is truncated after an expiry or a purge, so the embedding is gone from the files,
not only from the table. The file, its ``-wal`` and ``-shm`` and its folder are owner-only
(:mod:`visage.edge.files`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from ..errors import StorageError
from .files import private_file, private_folder

log = logging.getLogger(__name__)

MiB = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    dead_reason TEXT,
    expires_at REAL,
    dead_at REAL
);
CREATE INDEX IF NOT EXISTS event_pending ON event (dead_reason, seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ADDED_COLUMNS = ("expires_at REAL", "dead_at REAL")
"""Columns a queue made before expiry and dead-event retention lacks (added on open)."""
_INDEXES = """
CREATE INDEX IF NOT EXISTS event_expiry ON event (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS event_dead ON event (dead_at) WHERE dead_at IS NOT NULL;
"""
_DUE = (
    "(expires_at IS NOT NULL AND expires_at <= :now) "
    "OR (dead_reason IS NOT NULL AND COALESCE(dead_at, created_at) <= :now - :retention)"
)
"""Events :meth:`EventQueue.expire` deletes: past their expiry, or dead for longer than the
retention (a dead event from before ``dead_at`` was recorded counts from its creation)."""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
"""Events that may still be uploaded."""
DAY = 24 * 3600.0


class FullPolicy(StrEnum):
    """What :meth:`EventQueue.put` does when a cap is reached (see the module docstring)."""

    DROP_OLDEST = "drop-oldest"
    REFUSE_NEW = "refuse-new"


class QueueFull(StorageError):
    """The queue is at its cap and the policy is ``refuse-new``."""


@dataclass(frozen=True)
class QueueLimits:
    """Caps on the queue: events, payload bytes, and the policy past them."""

    max_events: int = 100_000
    max_bytes: int = 256 * MiB
    policy: FullPolicy = FullPolicy.DROP_OLDEST
    dead_retention_s: float = 7 * DAY
    """How long an event the server refused is kept for an operator to look at."""

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError("queue caps must be positive")
        if not self.dead_retention_s >= 0:
            raise ValueError("dead_retention_s must be zero or more")


@dataclass(frozen=True)
class Purged:
    """What :meth:`EventQueue.expire` or a purge deleted: events past their expiry, dead ones."""

    expired: int
    dead: int


@dataclass(frozen=True)
class QueuedEvent:
    """An event waiting for upload: its idempotency key and the JSON payload bytes."""

    seq: int
    key: str
    payload: bytes
    created_at: float
    attempts: int


@dataclass(frozen=True)
class QueueStats:
    """Counts: ``pending`` to upload, ``dead`` refused by the server; since the queue was
    created, ``dropped`` (drop-oldest) and ``refused`` (refuse-new) by the cap policy and
    ``delivered``; ``bytes`` of payload held."""

    pending: int
    dead: int
    bytes: int
    dropped: int
    refused: int
    delivered: int


class EventQueue:
    """A durable FIFO of events keyed by idempotency key; safe to share between threads."""

    def __init__(self, path: str | Path, limits: QueueLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or QueueLimits()
        self._lock = threading.Lock()
        try:
            private_folder(self.path.parent)
            private_file(self.path, create=True)  # SQLite gives -wal and -shm the file's mode
            self._tighten_sidecars()
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.executescript(_SCHEMA)
            self._add_columns()
            self._db.executescript(_INDEXES)
            self._tighten_sidecars()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the edge queue {self.path}: {exc}") from exc

    def _tighten_sidecars(self) -> None:
        """``-wal`` and ``-shm`` left by an older agent with looser modes become 0600."""
        for suffix in ("-wal", "-shm"):
            private_file(self.path.with_name(self.path.name + suffix))

    def _add_columns(self) -> None:
        """Bring a queue made by an older agent to the current columns."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(event)")}
        for column in _ADDED_COLUMNS:
            if column.split()[0] not in have:
                self._db.execute(f"ALTER TABLE event ADD COLUMN {column}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate (write-locked) transaction, committed durably or rolled back."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"edge queue {self.path}: {exc}") from exc

    def _read(self, sql: str, args: Sequence[object] | Mapping[str, object] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"edge queue {self.path}: {exc}") from exc

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int) -> None:
        db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (name, str(by), by),
        )

    def put(self, key: str, payload: bytes, *, expires_at: float | None = None) -> bool:
        """Store an event durably; ``False`` when its key is already queued (nothing changes).

        ``expires_at`` (a ``time.time()`` value): past it the event is not uploaded and is
        deleted. Applies the full policy first: drops the oldest events, or raises
        :class:`QueueFull`.
        """
        size = len(payload)
        if size > self.limits.max_bytes:
            raise QueueFull(
                f"an event of {size:,} bytes exceeds the queue cap of "
                f"{self.limits.max_bytes:,} bytes"
            )
        with self._write() as db:
            if db.execute("SELECT 1 FROM event WHERE key = ?", (key,)).fetchone():
                return False
            count, held = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM event"
            ).fetchone()
            over_count = count + 1 - self.limits.max_events
            over_bytes = held + size - self.limits.max_bytes
            refused = (
                over_count > 0 or over_bytes > 0
            ) and self.limits.policy is FullPolicy.REFUSE_NEW
            if refused:
                self._bump(db, "refused", 1)
            else:
                if over_count > 0 or over_bytes > 0:
                    dropped = self._drop_oldest(db, over_count, over_bytes)
                    log.warning(
                        "edge queue full: dropped the %d oldest events (policy drop-oldest)",
                        dropped,
                    )
                db.execute(
                    "INSERT INTO event (key, payload, size, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, payload, size, time.time(), expires_at),
                )
        if refused:
            raise QueueFull(
                f"edge queue full ({count:,} events, {held:,} bytes); policy refuse-new"
            )
        return True

    def _drop_oldest(self, db: sqlite3.Connection, over_count: int, over_bytes: int) -> int:
        """Delete the oldest events (dead ones first) until both caps have room."""
        victims: list[int] = []
        freed = 0
        rows = db.execute(
            "SELECT seq, size FROM event ORDER BY dead_reason IS NULL, seq"
        ).fetchall()
        for seq, size in rows:
            if len(victims) >= over_count and freed >= over_bytes:
                break
            victims.append(seq)
            freed += size
        db.executemany("DELETE FROM event WHERE seq = ?", [(s,) for s in victims])
        self._bump(db, "dropped", len(victims))
        return len(victims)

    def batch(self, *, limit: int = 100, max_bytes: int = 1 * MiB) -> list[QueuedEvent]:
        """The oldest pending events, at most ``limit`` and about ``max_bytes`` (at least one)."""
        rows = self._read(
            "SELECT seq, key, payload, created_at, attempts FROM event "
            f"WHERE dead_reason IS NULL AND {_LIVE} ORDER BY seq LIMIT ?",
            (time.time(), limit),
        )
        out: list[QueuedEvent] = []
        total = 0
        for seq, key, payload, created, attempts in rows:
            if out and total + len(payload) > max_bytes:
                break
            total += len(payload)
            out.append(QueuedEvent(seq, key, bytes(payload), created, attempts))
        return out

    def ack(self, keys: Sequence[str]) -> int:
        """Remove delivered events (the server stored them, now or before); returns how many."""
        if not keys:
            return 0
        with self._write() as db:
            removed = db.executemany(
                "DELETE FROM event WHERE key = ?", [(k,) for k in keys]
            ).rowcount
            self._bump(db, "delivered", removed)
        with self._lock:
            self._db.execute("PRAGMA incremental_vacuum")
        return removed

    def attempted(self, keys: Sequence[str]) -> None:
        """Count one failed upload attempt for each event (kept for retry)."""
        with self._write() as db:
            db.executemany(
                "UPDATE event SET attempts = attempts + 1 WHERE key = ?", [(k,) for k in keys]
            )

    def bury(self, key: str, reason: str) -> None:
        """Set an event aside as dead: the server refused it and retrying cannot help."""
        with self._write() as db:
            db.execute(
                "UPDATE event SET dead_reason = ?, dead_at = ? WHERE key = ?",
                (reason[:500], time.time(), key),
            )
        log.error("edge event %s refused by the server and kept aside: %s", key, reason)

    def dead(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of every dead event, oldest first."""
        rows = self._read(
            "SELECT key, dead_reason FROM event WHERE dead_reason IS NOT NULL ORDER BY seq"
        )
        return [(str(k), str(r)) for k, r in rows]

    def purge_dead(self) -> int:
        """Delete the dead events (after an operator has looked at them)."""
        with self._write() as db:
            removed = int(db.execute("DELETE FROM event WHERE dead_reason IS NOT NULL").rowcount)
        self._erase_freed(removed)
        return removed

    def expire(self, *, now: float | None = None) -> Purged:
        """Delete events past their expiry and dead events past ``dead_retention_s``.

        Cheap when nothing is due (one indexed read, no write); the syncer runs it before each
        upload batch, ``visage edge purge`` on demand.
        """
        args = {
            "now": time.time() if now is None else now,
            "retention": self.limits.dead_retention_s,
        }
        if not self._read(f"SELECT 1 FROM event WHERE {_DUE} LIMIT 1", args):
            return Purged(0, 0)
        with self._write() as db:
            ((expired, due),) = db.execute(
                "SELECT COALESCE(SUM(expires_at IS NOT NULL AND expires_at <= :now), 0), "
                f"COUNT(*) FROM event WHERE {_DUE}",
                args,
            ).fetchall()
            db.execute(f"DELETE FROM event WHERE {_DUE}", args)
        purged = Purged(expired=int(expired), dead=int(due) - int(expired))
        self._erase_freed(purged.expired + purged.dead)
        log.info("edge queue: %d expired and %d dead events deleted", purged.expired, purged.dead)
        return purged

    def _erase_freed(self, removed: int) -> None:
        """After deleting events: give pages back and truncate the write-ahead log, so the
        deleted payloads (overwritten in the database by ``secure_delete``) leave every file."""
        if not removed:
            return
        with self._lock:
            try:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise StorageError(f"edge queue {self.path}: {exc}") from exc

    def stats(self) -> QueueStats:
        """The queue's counts now."""
        ((pending, dead, held),) = self._read(
            "SELECT COALESCE(SUM(dead_reason IS NULL), 0), COALESCE(SUM(dead_reason IS NOT NULL), 0), "
            "COALESCE(SUM(size), 0) FROM event"
        )
        counters = {
            n: int(v)
            for n, v in self._read(
                "SELECT name, value FROM meta WHERE name IN ('dropped', 'refused', 'delivered')"
            )
        }
        return QueueStats(
            pending=int(pending),
            dead=int(dead),
            bytes=int(held),
            dropped=counters.get("dropped", 0),
            refused=counters.get("refused", 0),
            delivered=counters.get("delivered", 0),
        )

    def get_meta(self, name: str) -> str | None:
        """A value the agent keeps beside its queue (device id, pinned key, snapshot sequence)."""
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: str, **more: str) -> None:
        """Keep ``name = value`` (and each of ``more``) beside the queue, in one transaction."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [(name, value), *more.items()],
            )
