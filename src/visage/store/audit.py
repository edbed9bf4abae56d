"""The audit log: append-only events, each carrying the hash of the one before.

``hash = sha256(canonical JSON of every field but hash)``, where the fields include
``prev_hash``; the first event's ``prev_hash`` is 64 zeros. The newest ``seq`` and ``hash`` are
also kept in the locked state row, so deleting the *last* event is detected too. Anyone with
write access to the database could still cut the tail (and reset the state row) or rewrite the
whole chain, so every committed head is also signed into an anchor file outside the database
(:mod:`visage.store.anchor`), and :func:`verify_anchored` checks the chain against it.

Events are written in the same transaction as the change they describe, so there is never a
change without its event nor an event without its change.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StorageError, VisageError
from ..names import utf8_text
from ..signing import key_id
from .anchor import CheckpointReader, note_head
from .engine import store_failure
from .tables import AuditRow, ChainHead, StateRow, lock_state, utcnow

GENESIS = "0" * 64


def canonical_json(data: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class AuditEvent:
    """One audit event as stored; ``summary`` is the decoded result summary."""

    seq: int
    at: str
    actor: str
    action: str
    collection: str | None
    purpose: str | None
    input_hash: str | None
    summary: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: AuditRow) -> AuditEvent:
        return cls(
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            collection=row.collection,
            purpose=row.purpose,
            input_hash=row.input_hash,
            summary=json.loads(row.summary),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify_chain`: ``ok``, or the first broken link and why.

    ``anchored_seq`` / ``anchored_at``: the newest checkpoint the chain was checked against
    (``None`` when no anchor file was checked).
    """

    ok: bool
    events: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None
    anchored_seq: int | None = None
    anchored_at: str | None = None

    def describe(self) -> str:
        """One line for users."""
        if not self.ok:
            return f"audit chain broken at event {self.broken_seq}: {self.reason}"
        line = f"audit chain intact: {self.events} events, head {self.head}"
        if self.anchored_seq is None:
            return line + "; not anchored (no checkpoint file checked: a cut tail would not show)"
        if self.anchored_seq == 0:
            return line + "; the anchor file holds no checkpoint yet"
        later = self.events - self.anchored_seq
        after = f", {later} events written since" if later else ""
        return line + f"; anchored at event {self.anchored_seq} (signed {self.anchored_at}{after})"


def stamp(moment: datetime) -> str:
    """The text an event's ``at`` holds for an aware ``moment``: UTC, to the microsecond,
    fixed width, so comparing the text compares the times (the time filters rely on it)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def storable(value: Any) -> Any:
    """``value`` with every string in it as :func:`visage.names.utf8_text` and NUL written
    ``\\x00``: a refusal naming a file whose name is not UTF-8, or a purpose holding a NUL
    (which PostgreSQL's text cannot hold), is hashed and stored escaped, not lost to an
    encoding error that would leave it unaudited (a 503 where fuzzing sent ``purpose=%00``)."""
    if isinstance(value, str):
        return utf8_text(value).replace("\x00", "\\x00")
    if isinstance(value, Mapping):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


_HASHED = ("seq", "at", "actor", "action", "collection", "purpose", "input_hash", "summary",
           "prev_hash")  # fmt: skip
"""The stored fields an event's hash covers: all but the hash."""
_INSERT_EVENT = insert(AuditRow)  # run on the session's Connection: Core, not the ORM's bulk path
_SET_HEAD = update(StateRow).where(StateRow.id == 1)


def _fields_hash(fields: Mapping[str, Any]) -> str:
    """The hash of an event with these stored fields (those in :data:`_HASHED`)."""
    hashed = {name: fields[name] for name in _HASHED}
    return hashlib.sha256(canonical_json(hashed).encode("utf-8")).hexdigest()


def event_hash(row: AuditRow) -> str:
    """The hash an event should carry, from its stored fields."""
    return _fields_hash({name: getattr(row, name) for name in _HASHED})


def append(
    session: Session,
    state: ChainHead,
    *,
    actor: str,
    action: str,
    collection: str | None,
    purpose: str | None,
    input_hash: str | None,
    summary: Mapping[str, Any],
) -> int:
    """Add the next event to the chain inside the caller's transaction; its ``seq``.

    ``state`` must be the :class:`ChainHead` of the state row the transaction locked first;
    it supplies the previous hash and receives the new head. The row is inserted at once with
    a Core INSERT rather than left to the ORM's flush: with the head read and stored the same
    way, a search's audit commit went from 1.1-1.5 to 0.8-1.0 ms of CPU.
    """
    fields: dict[str, Any] = {
        "seq": state.audit_seq + 1,
        "at": stamp(utcnow()),
        "actor": storable(actor),
        "action": action,
        "collection": storable(collection),
        "purpose": storable(purpose),
        "input_hash": input_hash,
        "summary": canonical_json(storable(dict(summary))),
        "prev_hash": state.audit_head,
    }
    fields["hash"] = _fields_hash(fields)
    session.connection().execute(_INSERT_EVENT, fields)
    state.audit_seq = fields["seq"]
    state.audit_head = fields["hash"]
    note_head(session, state.audit_seq, state.audit_head)
    return state.audit_seq


@dataclass(frozen=True)
class Write:
    """A write transaction that holds the writers' lock, and the one way to add its events."""

    session: Session
    state: ChainHead

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
        """Append one event to the chain in this transaction; returns its ``seq``."""
        return append(
            self.session, self.state, actor=actor, action=action, collection=collection,
            purpose=purpose, input_hash=input_hash, summary=summary,
        )  # fmt: skip


@contextmanager
def write(sessions: sessionmaker[Session], what: str) -> Iterator[Write]:
    """The store's one audited write path (gallery, edge hub, key store, server events): a
    transaction that takes the writers' lock — the state row — first, so every writer queues
    in one order and none deadlocks. :class:`IntegrityError` passes through for the caller to
    name the conflict; other database errors become :class:`StorageError` naming ``what``."""
    try:
        with sessions() as session, session.begin():
            state = lock_state(session)
            before = state.audit_seq
            yield Write(session, state)
            if state.audit_seq != before:
                session.connection().execute(
                    _SET_HEAD, {"audit_seq": state.audit_seq, "audit_head": state.audit_head}
                )
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise store_failure(what, exc) from exc


@dataclass
class _Pending:
    fields: dict[str, Any]
    seq: int = 0
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Audit events of concurrent read-only operations (searches), appended in arrival order and
    committed together: one writer transaction (``begin``: it yields the session and the locked
    :class:`ChainHead`) per batch instead of one per event.

    No timer: while one batch commits, the next gathers; the first waiting caller then writes it.
    :meth:`append` returns only once *its* event is committed, so an answered request's event is
    durable before the answer leaves (a SIGKILL after it loses nothing). A failed commit fails
    every event of its batch.
    """

    def __init__(
        self, begin: Callable[[], AbstractContextManager[tuple[Session, ChainHead]]]
    ) -> None:
        self._begin = begin
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False

    def append(
        self,
        *,
        actor: str,
        action: str,
        collection: str | None,
        purpose: str | None,
        input_hash: str | None,
        summary: Mapping[str, Any],
    ) -> int:
        """Queue one event and wait until it is committed; its ``seq``."""
        item = _Pending({"actor": actor, "action": action, "collection": collection,
                         "purpose": purpose, "input_hash": input_hash, "summary": summary})  # fmt: skip
        with self._cond:
            self._queue.append(item)
            while not item.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item.seq

    def _write(self, batch: list[_Pending]) -> None:
        try:
            with self._begin() as (session, state):
                seqs = [append(session, state, **p.fields) for p in batch]
            for p, seq in zip(batch, seqs):
                p.seq = seq
        except VisageError as exc:  # every caller of the batch sees its commit's failure
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                if not p.seq and p.error is None:
                    p.error = StorageError("the audit commit was interrupted")
                p.done = True


def _rows(session: Session, *, batch: int = 5000) -> Iterator[AuditRow]:
    """Every event in ``seq`` order, read in pages so a long log needs little memory."""
    after = 0
    while True:
        page = session.scalars(
            select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(batch)
        ).all()
        if not page:
            return
        yield from page
        after = page[-1].seq


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain from the first event and name the first broken link.

    Detects an edited event (its hash no longer matches its fields), a deleted or inserted
    event (a gap in ``seq`` or a ``prev_hash`` that does not match), and a deleted or edited
    newest event (the state row's head disagrees).
    """
    state = session.get(StateRow, 1)
    if state is None:
        return ChainReport(
            False, 0, GENESIS, 0, "the state row holding the chain's head is missing"
        )
    expected_seq, prev = 1, GENESIS
    count = 0
    for row in _rows(session):
        if row.seq != expected_seq:
            return ChainReport(
                False,
                count,
                prev,
                expected_seq,
                f"event {expected_seq} is missing (event {row.seq} follows event {expected_seq - 1})",
            )
        if row.prev_hash != prev:
            return ChainReport(
                False,
                count,
                prev,
                row.seq,
                f"its prev_hash does not match the hash of event {row.seq - 1}",
            )
        if event_hash(row) != row.hash:
            return ChainReport(False, count, prev, row.seq, "its contents do not match its hash")
        prev = row.hash
        expected_seq += 1
        count += 1
    if state.audit_seq > count:
        return ChainReport(
            False,
            count,
            prev,
            count + 1,
            f"event {count + 1} is missing (the recorded head is event {state.audit_seq})",
        )
    if state.audit_seq < count:
        return ChainReport(
            False,
            count,
            prev,
            state.audit_seq + 1,
            f"it is not covered by the recorded head (event {state.audit_seq})",
        )
    if state.audit_head != prev:
        return ChainReport(False, count, prev, count, "it does not match the recorded head")
    return ChainReport(True, count, prev)


def verify_anchored(
    session: Session, anchors: Path, trusted: Ed25519PublicKey, upto: int | None = None
) -> ChainReport:
    """:func:`verify_chain`, then every checkpoint in ``anchors`` (signed by ``trusted``) must
    name an event of the chain with the same hash: a chain that ends before the newest
    checkpoint was cut, one whose hash differs was rewritten. Reads 5000 checkpoints at a time.

    ``upto``: the anchor file's size taken before ``session`` first read (default: now, before
    the chain is read). A checkpoint is written after its event commits, so every one within
    that size names an event the chain read must hold; later ones belong to events committed
    while it was verified, and are not taken for a cut.
    """
    if upto is None:
        upto = anchors.stat().st_size if anchors.is_file() else 0
    report = verify_chain(session)
    if not report.ok:
        return report
    n = report.events
    checkpoints = iter(CheckpointReader(anchors, upto))
    newest = None
    while chunk := list(islice(checkpoints, 5000)):
        wanted = sorted({c.seq for c in chunk if c.seq <= n})
        found = session.execute(select(AuditRow.seq, AuditRow.hash).where(AuditRow.seq.in_(wanted)))
        hashes = {seq: digest for seq, digest in found}
        for c in chunk:
            if not c.verified_by(trusted):
                return replace(
                    report,
                    ok=False,
                    broken_seq=c.seq,
                    reason=f"the checkpoint for it in {anchors} is not signed by the trusted key "
                    f"{key_id(trusted)} (signed by {c.key_id}, or edited)",
                )
            if c.seq <= n and hashes[c.seq] != c.head:
                return replace(
                    report,
                    ok=False,
                    broken_seq=c.seq,
                    reason=f"its hash differs from the checkpoint signed at {c.at}: the chain "
                    "was rewritten",
                )
            if newest is None or c.seq > newest.seq:
                newest = c
    if newest is not None and newest.seq > n:
        return replace(
            report,
            ok=False,
            broken_seq=n + 1,
            reason=f"the chain ends at seq {n} but a checkpoint says {newest.seq}, signed at "
            f"{newest.at}: events {n + 1} to {newest.seq} were cut",
            anchored_seq=newest.seq,
            anchored_at=newest.at,
        )
    if newest is None:
        return replace(report, anchored_seq=0)
    return replace(report, anchored_seq=newest.seq, anchored_at=newest.at)


LOG_READ = "audit.read"
"""The action of a read of the audit log (see :func:`events`)."""


def events_query(
    *,
    collection: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> Select[AuditRow]:
    """The query :func:`events` runs (its arguments), apart so a test can ask the database
    for its plan: a time window is a range on ``ix_audit_event_at``, an actor reads
    ``ix_audit_event_actor`` in ``seq`` order, rather than a scan of the table."""
    order = AuditRow.seq.desc() if newest_first else AuditRow.seq
    query = select(AuditRow).order_by(order).limit(limit)
    if after:  # seq > 0 holds for every event, but SQLite plans it as a range worth walking
        query = query.where(AuditRow.seq > after)
    if before is not None:
        query = query.where(AuditRow.seq < before)
    if collection is not None:
        query = query.where(AuditRow.collection == storable(collection))
    if actor is not None:
        query = query.where(AuditRow.actor == storable(actor))
    if since is not None:
        query = query.where(AuditRow.at >= stamp(since))
    if until is not None:
        query = query.where(AuditRow.at < stamp(until))
    return query.where(
        AuditRow.action == action if action is not None else AuditRow.action != LOG_READ
    )


RECENT = 2000
"""Events a newest-first page filtered by time first looks through along ``seq`` before the
window is read off ``ix_audit_event_at``: a window holding most of the log then answers from
its newest events at once (SQLite, with no statistics, would otherwise read and sort the whole
window through the index: ~0.5 s at 200,000 events), and a narrow one costs this walk more
(~2 ms). Measured by benchmarks/audit.py (docs/gallery.md, "Audit")."""


def events(
    session: Session,
    *,
    collection: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """Events with ``after < seq < before`` and ``since <= at < until`` (aware times), oldest
    first (``newest_first``: the newest ``limit`` of them, newest first), optionally for one
    collection, action or actor. Reads of the log itself (:data:`LOG_READ`) are listed only
    when asked for by that action: each read is audited, so a client paging on until a page
    comes back empty would otherwise never stop."""

    def page(lowest: int, below: int | None, n: int) -> list[AuditEvent]:
        query = events_query(
            collection=collection, action=action, actor=actor, since=since, until=until,
            after=lowest, before=below, limit=n, newest_first=newest_first,
        )  # fmt: skip
        return [AuditEvent.from_row(r) for r in session.scalars(query)]

    if not newest_first or (since is None and until is None):
        return page(after, before, limit)
    top = before - 1 if before is not None else session.scalar(select(func.max(AuditRow.seq)))
    if top is None:
        return []
    floor = max(after, top - RECENT)
    recent = page(floor, top + 1, limit)  # bounded on both sides: a range of the primary key
    if len(recent) == limit or floor == after:
        return recent
    return recent + page(after, floor + 1, limit - len(recent))
