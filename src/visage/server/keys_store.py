"""API keys, stored hashed in the gallery's database (the ``api_key`` table).

A key is shown once, when created, as ``<key id>.<secret>``: the id (``vk_`` and 12 hex digits)
is public and is what the audit log records as the actor; the secret is 32 random bytes. Only
``sha256(token)`` is stored, so a copy of the database does not hand out working keys, and a
token is checked by looking its id up and comparing hashes in constant time.

A key carries scopes (``identify``, ``enroll``, ``admin``; admin implies the other two) and
the collections it may touch (``*`` for all). It may expire (``expires_at``: refused with 401
from then on) and name the edge devices it speaks for (``devices``: the edge routes refuse any
other device id with 403; ``None`` speaks for any, as keys made before revision ``0006`` do).
Creating and revoking keys writes audit events.

The table's model is declared on the gallery's declarative ``Base`` so one schema (and one
Alembic history) covers the whole store; revision ``0002_api_key`` creates it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.orm import Session

from ..edge.events import check_device_id
from ..errors import InputError, NotFound
from ..gallery.records import collection_name
from ..store import ApiKeyRow, Store, utcnow
from .problems import Unauthorized

ALL_COLLECTIONS = "*"
UNKNOWN_KEY = "unknown, malformed or revoked API key"
KEY_ID_PREFIX = "vk_"
_KEY_BY_ID = select(*ApiKeyRow.__table__.columns).where(ApiKeyRow.id == bindparam("id"))
"""Every request's key lookup, built once and read as a Core row: with the ORM's identity-map
load (``Session.get``) the lookup held the GIL for 9.3% of a served identify's samples, as a
Core row 4.9% (py-spy ``--gil``, 100k gallery, 16 connections)."""
_TOKEN = re.compile(r"^(vk_[0-9a-f]{12})\.([A-Za-z0-9_-]{20,100})$")
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([hdw])$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
MAX_LIFETIME = timedelta(days=3660)
"""The longest expiry a key may be given (about ten years): beyond it, create no expiry."""


class Scope(StrEnum):
    """What a key may do: search (``identify``), change persons (``enroll``), report edge events
    and pull offline snapshots (``device``, see :mod:`visage.server.routes.edge`), or everything."""

    IDENTIFY = "identify"
    ENROLL = "enroll"
    ADMIN = "admin"
    DEVICE = "device"


@dataclass(frozen=True)
class ApiKey:
    """A key as the server sees it (never its secret). ``collections`` ``None`` means all,
    ``devices`` ``None`` any device id, ``expires_at`` ``None`` never."""

    id: str
    name: str
    scopes: frozenset[Scope]
    collections: frozenset[str] | None
    rate_limit: float | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    devices: frozenset[str] | None = None

    def allows(self, scope: Scope) -> bool:
        """True when the key holds ``scope`` (admin holds every scope)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def sees(self, collection: str) -> bool:
        """True when the key may touch ``collection``."""
        return self.collections is None or collection in self.collections

    def speaks_for(self, device_id: str) -> bool:
        """True when the key may post events and pull snapshots as ``device_id``."""
        return self.devices is None or device_id in self.devices

    def expired(self, now: datetime) -> bool:
        """True from ``expires_at`` on."""
        return self.expires_at is not None and now >= self.expires_at

    @classmethod
    def from_row(cls, row: ApiKeyRow | Row[Any]) -> ApiKey:
        """From the ORM row or a Core row of the same columns (what :data:`_KEY_BY_ID` reads)."""
        return cls(
            id=row.id,
            name=row.name,
            scopes=frozenset(Scope(s) for s in row.scopes),
            collections=None if ALL_COLLECTIONS in row.collections else frozenset(row.collections),
            rate_limit=row.rate_limit,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            expires_at=row.expires_at,
            devices=None if row.devices is None else frozenset(row.devices),
        )


@dataclass(frozen=True)
class NewKey:
    """A key just created and its token, which is shown this once and never stored."""

    key: ApiKey
    token: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from names (``identify``, ``enroll``, ``admin``); :class:`InputError` otherwise."""
    found: set[Scope] = set()
    for value in values:
        try:
            found.add(Scope(value.strip()))
        except ValueError:
            allowed = ", ".join(s.value for s in Scope)
            raise InputError(f"unknown scope {value!r}; one of: {allowed}") from None
    if not found:
        raise InputError("a key needs at least one scope")
    return frozenset(found)


def parse_expiry(
    expires_in: str | None = None, expires: str | None = None, *, now: datetime | None = None
) -> datetime | None:
    """When a key made now should expire: ``expires_in`` a duration (``12h``, ``30d``, ``8w``)
    or ``expires`` an ISO date (midnight UTC) or time (UTC unless it names a zone); ``None``
    for neither. :class:`InputError` for both, a malformed value, or a moment not in the next
    :data:`MAX_LIFETIME`."""
    now = now or utcnow()
    if expires_in is not None and expires is not None:
        raise InputError("give --expires-in or --expires, not both")
    if expires_in is not None:
        found = _DURATION.match(expires_in.strip())
        if found is None:
            raise InputError(f"invalid duration {expires_in!r}: a number and h, d or w (30d)")
        at = now + int(found.group(1)) * _UNITS[found.group(2)]
    elif expires is not None:
        at = _moment(expires.strip())
    else:
        return None
    if not now < at <= now + MAX_LIFETIME:
        raise InputError(f"a key's expiry must be after now and within {MAX_LIFETIME.days} days")
    return at


def _moment(text: str) -> datetime:
    """An ISO date (midnight UTC) or date and time (UTC unless it names a zone)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"invalid expiry {text!r}: a date (2027-01-01) or ISO time") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class KeyStore:
    """Create, list, revoke and check API keys in the gallery's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str],
        collections: Iterable[str] = (ALL_COLLECTIONS,),
        rate_limit: float | None = None,
        expires_at: datetime | None = None,
        devices: Iterable[str] | None = None,
        actor: str = "local",
    ) -> NewKey:
        """A new key; the returned token is the only copy of its secret. ``devices``: the edge
        device ids it speaks for (``None``: any); ``expires_at``: refused from then on."""
        scope_set = parse_scopes(scopes)
        names = sorted({c.strip() for c in collections if c.strip()})
        if not names:
            raise InputError("a key needs at least one collection (or '*' for all)")
        for coll in names:
            if coll != ALL_COLLECTIONS:
                collection_name(coll)
        if not name or len(name) > 200:
            raise InputError("a key name is 1 to 200 characters")
        if rate_limit is not None and rate_limit < 0:
            raise InputError("a rate limit is 0 (unlimited) or more requests per second")
        if expires_at is not None and expires_at <= utcnow():
            raise InputError("a key's expiry must be in the future")
        device_ids = None if devices is None else sorted({check_device_id(d) for d in devices})
        if device_ids == []:
            raise InputError("a key bound to devices names at least one device id")
        key_id = KEY_ID_PREFIX + secrets.token_hex(6)
        token = f"{key_id}.{secrets.token_urlsafe(32)}"
        row = ApiKeyRow(
            id=key_id,
            name=name,
            token_sha256=_hash(token),
            scopes=sorted(s.value for s in scope_set),
            collections=[ALL_COLLECTIONS] if ALL_COLLECTIONS in names else names,
            rate_limit=rate_limit,
            created_at=utcnow(),
            revoked_at=None,
            expires_at=expires_at,
            devices=device_ids,
        )
        with self._store.write("API key store") as w:
            w.record(
                "key.create",
                actor=actor,
                key=key_id,
                name=name,
                scopes=row.scopes,
                collections=row.collections,
                rate_limit=rate_limit,
                expires_at=expires_at.isoformat() if expires_at else None,
                devices=device_ids,
            )
            w.session.add(row)
            return NewKey(ApiKey.from_row(row), token)

    def revoke(self, key_id: str, *, actor: str = "local") -> ApiKey:
        """Revoke a key at once; :class:`NotFound` for an unknown id."""
        with self._store.write("API key store") as w:
            w.record("key.revoke", actor=actor, key=key_id)
            row = w.session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return ApiKey.from_row(row)

    def keys(self) -> list[ApiKey]:
        """Every key, oldest first, revoked ones included."""
        with self._read() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [ApiKey.from_row(r) for r in rows]

    def active_count(self) -> int:
        """How many keys are not revoked."""
        with self._read() as session:
            count = session.scalar(
                select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
            )
            return int(count or 0)

    def authenticate(self, token: str, *, now: datetime | None = None) -> ApiKey:
        """The live key a token belongs to; :class:`Unauthorized` for a malformed, unknown,
        wrong or revoked token (one message for all: it tells a guesser nothing) and for an
        expired key (said only to the holder of its secret)."""
        found = _TOKEN.match(token)
        if found is None:
            raise Unauthorized(UNKNOWN_KEY)
        with self._read() as session:
            row = session.connection().execute(_KEY_BY_ID, {"id": found.group(1)}).first()
            if row is None or row.revoked_at is not None:
                raise Unauthorized(UNKNOWN_KEY)
            if not hmac.compare_digest(row.token_sha256, _hash(token)):
                raise Unauthorized(UNKNOWN_KEY)
            key = ApiKey.from_row(row)
        if key.expired(now or utcnow()):
            assert key.expires_at is not None
            raise Unauthorized(
                f"API key {key.id} expired at {key.expires_at.isoformat()}; "
                "create a new one (visage keys create)"
            )
        return key

    def _read(self) -> AbstractContextManager[Session]:
        """A read-only transaction: checking a key takes no writers' lock."""
        return self._store.read("API key store")
