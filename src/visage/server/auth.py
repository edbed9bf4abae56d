"""Who is calling, and may they: API keys, scopes, collections and a per-key rate limit.

Routes never check keys themselves: they depend on :class:`Requires` (through the aliases in
:mod:`visage.server.deps`), which authenticates the ``Authorization: Bearer <key>`` header,
spends one token of the key's rate, then checks the scope and — when the route names one in
its path or query — the collection. The order gives the clearest answer: 401 before 429
before 403.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .keys_store import ApiKey, KeyStore, Scope
from .problems import Forbidden, RateLimited, Unauthorized

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
            raise Forbidden(f"key {key.id} is limited to some collections; name one")
    elif not key.sees(collection):
        raise Forbidden(f"key {key.id} may not use collection {collection!r}")


class Requires:
    """A dependency: the caller's key, which must hold ``scope`` and see the named collection.

    ``scope`` ``None`` accepts any scope. The collection is the ``collection`` path parameter,
    or else the ``collection`` query parameter; routes that take neither check only the scope.
    """

    def __init__(self, scope: Scope | None) -> None:
        self.scope = scope

    def __call__(self, request: Request, key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if self.scope is not None and not key.allows(self.scope):
            raise Forbidden(f"key {key.id} lacks the {self.scope.value!r} scope")
        collection = request.path_params.get("collection") or request.query_params.get("collection")
        if collection is not None:
            ensure_sees(key, collection)
        return key
