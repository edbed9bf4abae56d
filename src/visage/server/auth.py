"""Who is calling, and may they: API keys, scopes, collections and a per-key rate limit.

Routes never check keys themselves: they depend on :class:`Requires` (through the aliases in
:mod:`visage.server.deps`), which authenticates the ``Authorization: Bearer <key>`` header,
spends one token of the key's rate, then checks the scope and — when the route names one in
its path or query — the collection. The order gives the clearest answer: 401 before 429
before 403.

Refusals are accounted for before they are answered, in one handler (:func:`install`):

- **403** goes into the audit chain (``auth.forbidden``: key, method, path, why). The caller
  holds a valid key and has already spent one token of its rate, so these events grow the
  chain no faster than the key's allowed calls would.
- **401** goes to the ``visage.security`` log, at most :data:`SECURITY_LOG_BURST` lines at
  once and :data:`SECURITY_LOG_RATE` a second after that, the rest counted in the next line:
  anyone can send bad keys, and a flood must not grow the (forever kept) chain.
"""

from __future__ import annotations

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


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second on average, ``burst`` at once.

    A key's own rate (set at creation) overrides the default; a rate of 0 means unlimited.
    In memory and per process: it bounds how fast one key can drive this server, it is not a
    quota.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def spend(self, key: ApiKey) -> None:
        """Take one request from the key's bucket; :class:`RateLimited` when it is empty."""
        rate = self.rate if key.rate_limit is None else key.rate_limit
        if rate <= 0:
            return
        capacity = float(max(self.burst, 1))
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key.id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key.id] = (tokens, now)
                raise RateLimited(key.id, (1.0 - tokens) / rate)
            self._buckets[key.id] = (tokens - 1.0, now)


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
    """The caller's live key, after spending one request of its rate."""
    if credentials is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' (visage keys create)")
    keys: KeyStore = request.app.state.services.keys
    key = keys.authenticate(credentials.credentials)
    if key is None:
        raise Unauthorized("unknown, malformed or revoked API key")
    limiter: RateLimiter = request.app.state.services.limiter
    limiter.spend(key)
    return key


def ensure_sees(key: ApiKey, collection: str | None) -> None:
    """:class:`Forbidden` unless ``key`` may use ``collection`` (``None``: every collection)."""
    if collection is None:
        if key.collections is not None:
            raise Forbidden(f"key {key.id} is limited to some collections; name one", key_id=key.id)
    elif not key.sees(collection):
        raise Forbidden(f"key {key.id} may not use collection {collection!r}", key_id=key.id)


class Requires:
    """A dependency: the caller's key, which must hold ``scope`` and see the named collection.

    ``scope`` ``None`` accepts any scope. The collection is the ``collection`` path parameter,
    or else the ``collection`` query parameter; routes that take neither check only the scope.
    """

    def __init__(self, scope: Scope | None) -> None:
        self.scope = scope

    def __call__(self, request: Request, key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if self.scope is not None and not key.allows(self.scope):
            raise Forbidden(f"key {key.id} lacks the {self.scope.value!r} scope", key_id=key.id)
        collection = request.path_params.get("collection") or request.query_params.get("collection")
        if collection is not None:
            ensure_sees(key, collection)
        return key
