"""Who is calling, and may they: API keys, scopes, collections and a per-key rate limit.

Routes never check keys themselves: they depend on :class:`Requires` (through the aliases in
:mod:`visage.server.deps`), which authenticates the ``Authorization: Bearer <key>`` header,
spends one token of the key's rate, then checks the scope and — when the route names one in
its path or query — the collection. The order gives the clearest answer: 401 before 429
before 403. One 429 comes first: a client address that has spent its
:class:`FailureLimit` (failed authentications a minute) is refused before its token is even
looked up, so guessing keys is slow; tokens already served to that address still are.

Refusals are accounted for before they are answered, in one handler (:func:`install`):

- **403** goes into the audit chain (``auth.forbidden``: key, method, path, why). The caller
  holds a valid key and has already spent one token of its rate, so these events grow the
  chain no faster than the key's allowed calls would.
- **401** goes to the ``visage.security`` log, at most :data:`SECURITY_LOG_BURST` lines at
  once and :data:`SECURITY_LOG_RATE` a second after that, the rest counted in the next line:
  anyone can send bad keys, and a flood must not grow the (forever kept) chain.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..errors import StorageError
from .events import EventLog
from .keys_store import ApiKey, KeyStore, Scope
from .problems import Forbidden, RateLimited, Unauthorized, visage_error

SECURITY_LOG_RATE = 1.0
"""Lines a second the security log writes for 401s once its burst is spent."""
SECURITY_LOG_BURST = 20
security_log = logging.getLogger("visage.security")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `visage keys create`, sent as `Authorization: Bearer <key>`.",
)


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``capacity`` at once (starts full)."""

    def __init__(self, capacity: float, now: float) -> None:
        self.tokens = capacity
        self.last = now

    def take(self, rate: float, capacity: float, now: float) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is there."""
        self.tokens = min(capacity, self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens < 1.0:
            return (1.0 - self.tokens) / rate
        self.tokens -= 1.0
        return 0.0


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second on average, ``burst`` at once.

    A key's own rate (set at creation) overrides the default and is its burst too (a key of
    2/s makes at most 2 requests at once, not the server's 100); a rate of 0 means unlimited.
    In memory and per process: it bounds how fast one key can drive this server, it is not a
    quota.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def spend(self, key: ApiKey) -> None:
        """Take one request from the key's bucket; :class:`RateLimited` when it is empty."""
        rate = self.rate if key.rate_limit is None else key.rate_limit
        if rate <= 0:
            return
        capacity = float(max(self.burst if key.rate_limit is None else rate, 1.0))
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(key.id, _Bucket(capacity, now))
            wait = bucket.take(rate, capacity, now)
        if wait:
            raise RateLimited(f"rate limit of key {key.id} exceeded", wait)


class _Client:
    """One client address's failed-authentication bucket and the tokens served to it."""

    def __init__(self, capacity: float, now: float) -> None:
        self.bucket = _Bucket(capacity, now)
        self.served: dict[str, None] = {}  # sha256 of tokens, oldest first


class FailureLimit:
    """Failed authentications per client address: ``per_minute`` at once, then that many a
    minute; 0 turns it off.

    A token is checked in two steps: :meth:`admit` before the key is looked up spends one
    failure in advance (or refuses with :class:`RateLimited`), :meth:`served` gives it back
    once the key proved good. So an address that keeps guessing is refused without a lookup,
    while a token that has already been served to the address (its last
    :data:`SERVED_PER_CLIENT`) skips the limit: a client behind the same address as a guesser
    keeps working. The address is the TCP peer's (the server trusts no forwarded header).
    In memory and per process; at most :data:`MAX_CLIENTS` addresses are tracked, the ones
    with no failures to remember dropped first.
    """

    SERVED_PER_CLIENT = 32
    MAX_CLIENTS = 10_000

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    def admit(self, client: str, token: str) -> bool:
        """Whether the lookup of ``token`` spent one of ``client``'s failures (to give back on
        success); :class:`RateLimited` when they are spent."""
        if self.rate <= 0:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        with self._lock:
            now = self._clock()
            entry = self._clients.get(client)
            if entry is None:
                self._make_room(now)
                entry = self._clients[client] = _Client(self.capacity, now)
            if digest in entry.served:
                return False
            wait = entry.bucket.take(self.rate, self.capacity, now)
        if wait:
            raise RateLimited(f"too many failed authentications from {client}", wait)
        return True

    def served(self, client: str, token: str, *, spent: bool) -> None:
        """``token`` proved good for ``client``: remember it, and give back what ``admit`` took."""
        if self.rate <= 0:
            return
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        with self._lock:
            entry = self._clients.get(client)
            if entry is None:
                return
            if spent:
                entry.bucket.tokens = min(self.capacity, entry.bucket.tokens + 1.0)
            entry.served.pop(digest, None)
            entry.served[digest] = None
            while len(entry.served) > self.SERVED_PER_CLIENT:
                entry.served.pop(next(iter(entry.served)))

    def _make_room(self, now: float) -> None:
        """Below :data:`MAX_CLIENTS`: drop addresses whose bucket has refilled, then the oldest."""
        if len(self._clients) < self.MAX_CLIENTS:
            return
        for name, entry in list(self._clients.items()):
            refilled = entry.bucket.tokens + (now - entry.bucket.last) * self.rate
            if refilled >= self.capacity:
                del self._clients[name]
        while len(self._clients) >= self.MAX_CLIENTS:
            del self._clients[next(iter(self._clients))]


class SecurityLog:
    """Rate-limited lines for refused authentications (401); what it skips it counts."""

    def __init__(
        self,
        rate: float = SECURITY_LOG_RATE,
        burst: int = SECURITY_LOG_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bucket = (float(burst), clock())
        self.rate = rate
        self.burst = burst
        self.suppressed = 0
        self._clock = clock
        self._lock = threading.Lock()

    def unauthorized(self, request: Request, exc: Unauthorized) -> bool:
        """Log one refused authentication, unless over the rate; returns whether it was logged.

        Names the client address, method, path and the key id the token claims (never the
        secret, and only if it looks like an id).
        """
        with self._lock:
            now = self._clock()
            tokens, last = self._bucket
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._bucket = (tokens, now)
                self.suppressed += 1
                return False
            self._bucket = (tokens - 1.0, now)
            skipped, self.suppressed = self.suppressed, 0
        claimed = _claimed_key_id(request)
        security_log.warning(
            "401 %s %s from %s: %s%s%s", request.method, request.url.path,
            request.client.host if request.client else "?", exc,
            f" (token claims key {claimed})" if claimed else "",
            f"; {skipped} more refused authentications not logged" if skipped else "",
        )
        return True


def _claimed_key_id(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip()
    claimed = token.split(".", 1)[0] if "." in token else ""
    return claimed if _KEY_ID.fullmatch(claimed) else None


def _record_forbidden(events: EventLog, request: Request, exc: Forbidden) -> int:
    """The audit event of a 403: the key, what it asked for and why it was refused."""
    return events.record(
        "auth.forbidden",
        actor=exc.key_id,
        collection=request.path_params.get("collection") or request.query_params.get("collection"),
        purpose=request.query_params.get("purpose"),
        method=request.method,
        path=request.url.path,
        detail=str(exc),
    )


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    services = getattr(request.app.state, "services", None)
    if services is not None and isinstance(exc, Forbidden):
        try:
            exc.audit_seq = await run_in_threadpool(_record_forbidden, services.events, request, exc)
        except StorageError as failure:
            security_log.error("403 for key %s not audited: %s", exc.key_id, failure)
    elif services is not None and isinstance(exc, Unauthorized):
        services.security.unauthorized(request, exc)
    return await visage_error(request, exc)


def install(app: FastAPI) -> None:
    """Account for 401s (security log) and 403s (audit chain) before answering them."""
    app.add_exception_handler(Unauthorized, _refused)
    app.add_exception_handler(Forbidden, _refused)


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The caller's live key, after spending one request of its rate; a token that fails counts
    against the client address's :class:`FailureLimit`, checked before the lookup."""
    if credentials is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' (visage keys create)")
    services = request.app.state.services
    client = request.client.host if request.client else "?"
    token = credentials.credentials
    failures: FailureLimit = services.failures
    spent = failures.admit(client, token)
    keys: KeyStore = services.keys
    key = keys.authenticate(token)
    failures.served(client, token, spent=spent)
    limiter: RateLimiter = services.limiter
    limiter.spend(key)
    return key


def ensure_sees(key: ApiKey, collection: str | None) -> None:
    """:class:`Forbidden` unless ``key`` may use ``collection`` (``None``: every collection)."""
    if collection is None:
        if key.collections is not None:
            raise Forbidden(f"key {key.id} is limited to some collections; name one", key_id=key.id)
    elif not key.sees(collection):
        raise Forbidden(f"key {key.id} may not use collection {collection!r}", key_id=key.id)


def ensure_speaks_for(key: ApiKey, device_id: str) -> None:
    """:class:`Forbidden` unless ``key`` may act as the edge device ``device_id``."""
    if not key.speaks_for(device_id):
        raise Forbidden(f"key {key.id} may not act as device {device_id!r}", key_id=key.id)


class Requires:
    """A dependency: the caller's key, which must hold ``scope`` and see the named collection.

    ``scope`` ``None`` accepts any scope. The collection is the ``collection`` path parameter,
    or else the ``collection`` query parameter; routes that take neither check only the scope.
    """

    def __init__(self, scope: Scope | None) -> None:
        self.scope = scope

    async def __call__(
        self, request: Request, key: Annotated[ApiKey, Depends(authenticate)]
    ) -> ApiKey:
        return self.check(request, key)

    def check(self, request: Request, key: ApiKey) -> ApiKey:
        """``key``, when it holds the scope and sees the collection ``request`` names."""
        if self.scope is not None and not key.allows(self.scope):
            raise Forbidden(f"key {key.id} lacks the {self.scope.value!r} scope", key_id=key.id)
        collection = request.path_params.get("collection") or request.query_params.get("collection")
        if collection is not None:
            ensure_sees(key, collection)
        return key
