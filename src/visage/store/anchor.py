"""Signed checkpoints of the audit chain's head, kept outside the database.

The hash chain shows an edited or removed event, but whoever can write the database can cut
its tail and reset ``gallery_state`` to the new last hash, or delete every event, and the
chain still links. So after every committed transaction that appended audit events, its new
head is signed (Ed25519, keys kept as :mod:`visage.signing` keeps them) and appended as one
line to an *anchor file* — a checkpoint in the style of RFC 6962's signed tree heads:
``(seq, head hash, time)``. ``visage audit verify`` then refuses a chain that ends before, or
differs from, any checkpoint.

The file is ``$VISAGE_AUDIT_ANCHORS`` (or the server's ``audit_anchors`` setting), else
``<sqlite file>.audit-anchors`` beside a SQLite store; other stores are anchored only when it
is set. The signing key is ``$VISAGE_AUDIT_ANCHOR_KEY``, else ``<anchor file>.key.pem``
(created on first use, mode 600). Writes are appends under ``flock``, fsync'd, one per
committed transaction (~0.1 ms to sign, plus the fsync); several processes may share a file.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from weakref import WeakKeyDictionary

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from ..errors import StorageError
from ..signing import key_id, load_signing_key

ANCHORS_ENV = "VISAGE_AUDIT_ANCHORS"
ANCHOR_KEY_ENV = "VISAGE_AUDIT_ANCHOR_KEY"
CHECKPOINT_FORMAT = "visage-audit-checkpoint/v1"
_HEAD = "visage.audit.head"


def anchor_file(db_file: Path | None, configured: str | Path | None = None) -> Path | None:
    """Where checkpoints go: ``configured``, ``$VISAGE_AUDIT_ANCHORS``, or beside a SQLite
    file (``db_file``); ``None`` (not anchored) for another store with neither set."""
    chosen = configured or os.environ.get(ANCHORS_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return None if db_file is None else db_file.with_name(db_file.name + ".audit-anchors")


def anchor_key_file(anchors: Path) -> Path:
    """The checkpoint signing key: ``$VISAGE_AUDIT_ANCHOR_KEY``, else beside the anchor file."""
    configured = os.environ.get(ANCHOR_KEY_ENV)
    return Path(configured).expanduser() if configured else anchors.with_name(anchors.name + ".key.pem")


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the chain had ``seq`` events ending in ``head`` at ``at``."""

    seq: int
    head: str
    at: str
    key_id: str
    signature: bytes

    @staticmethod
    def message(seq: int, head: str, at: str) -> bytes:
        """The bytes signed: a format line, then seq, head and time, one per line."""
        return f"{CHECKPOINT_FORMAT}\n{seq}\n{head}\n{at}\n".encode("ascii")

    def line(self) -> bytes:
        """The checkpoint as one JSON line of the anchor file."""
        record = {
            "format": CHECKPOINT_FORMAT, "seq": self.seq, "head": self.head, "at": self.at,
            "key_id": self.key_id, "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return (json.dumps(record, sort_keys=True) + "\n").encode("ascii")

    @classmethod
    def parse(cls, line: str) -> Checkpoint:
        """A checkpoint from its line; :class:`ValueError` when the line is not one."""
        try:
            record = json.loads(line)
            if record["format"] != CHECKPOINT_FORMAT:
                raise ValueError(f"format {record['format']!r}")
            return cls(
                int(record["seq"]), str(record["head"]), str(record["at"]), str(record["key_id"]),
                base64.b64decode(record["signature"], validate=True),
            )
        except (KeyError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None

    def verified_by(self, trusted: Ed25519PublicKey) -> bool:
        """Whether ``trusted`` signed exactly this seq, head and time."""
        try:
            trusted.verify(self.signature, self.message(self.seq, self.head, self.at))
        except InvalidSignature:
            return False
        return True


class AuditAnchor:
    """Appends signed checkpoints to one anchor file."""

    def __init__(self, path: Path, key: Ed25519PrivateKey) -> None:
        self.path = path
        self._key = key
        self._key_id = key_id(key.public_key())

    @classmethod
    def open(cls, path: Path) -> AuditAnchor:
        """The anchor for ``path``, its signing key read or created (see :func:`anchor_key_file`)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the audit anchor folder {path.parent}: {exc}") from exc
        return cls(path, load_signing_key(anchor_key_file(path), create=True))

    def checkpoint(self, seq: int, head: str) -> Checkpoint:
        """Sign ``(seq, head, now)`` and append it durably; :class:`StorageError` if it cannot."""
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        signed = Checkpoint(seq, head, at, self._key_id, self._key.sign(Checkpoint.message(seq, head, at)))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a crash cut a line short
                os.write(fd, (b"\n" if torn else b"") + signed.line())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(
                f"audit event {seq} is committed but its checkpoint could not be written to "
                f"{self.path}: {exc}"
            ) from exc
        return signed


class CheckpointReader:
    """The checkpoints of an anchor file, in file order; ``unreadable`` counts torn lines.

    ``upto``: read only the first ``upto`` bytes (the file's size when a verification began),
    so checkpoints of events committed after the chain was read are not taken for a cut; a
    line that crosses that size was still being written, and is left to the next verification."""

    def __init__(self, path: Path, upto: int | None = None) -> None:
        self.path = path
        self.upto = upto
        self.unreadable = 0

    def __iter__(self) -> Iterator[Checkpoint]:
        try:
            with open(self.path, encoding="ascii", errors="replace") as fh:
                read = 0
                for line in fh:
                    read += len(line)
                    if self.upto is not None and read > self.upto:
                        return  # written, or still being written, after the size was taken
                    if not line.strip():
                        continue
                    try:
                        yield Checkpoint.parse(line)
                    except ValueError:
                        self.unreadable += 1
        except OSError as exc:
            raise StorageError(f"cannot read the audit anchor file {self.path}: {exc}") from exc


_ANCHORS: WeakKeyDictionary[Engine, AuditAnchor] = WeakKeyDictionary()


def attach(engine: Engine, anchor: AuditAnchor) -> None:
    """Checkpoint every transaction on ``engine`` that appends audit events, once committed."""
    _ANCHORS[engine] = anchor


def note_head(session: Session, seq: int, head: str) -> None:
    """Remember the head the session's transaction will have once it commits."""
    session.info[_HEAD] = (seq, head)


@event.listens_for(Session, "after_commit")
def _checkpoint_committed(session: Session) -> None:
    head = session.info.pop(_HEAD, None)
    anchor = _ANCHORS.get(session.bind) if isinstance(session.bind, Engine) else None
    if head is not None and anchor is not None:
        anchor.checkpoint(*head)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_HEAD, None)
