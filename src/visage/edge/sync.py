"""Uploading the queue: batches, idempotency keys, exponential backoff with jitter, resumable.

The uplink is a pluggable transport (:class:`Uplink`): :class:`HttpUplink` speaks to a Visage
server (``POST /v1/edge/events``, ``GET /v1/edge/snapshot``); :class:`MemoryUplink` is an
in-memory server for tests, with the same deduplication and switchable outages.

:class:`Syncer` moves events from the :class:`~visage.edge.queue.EventQueue` to the uplink:

- oldest first, in batches of at most ``batch_size`` events and ``batch_bytes`` bytes;
- an event leaves the queue only when the server's receipt says it is stored (now or
  before), so a connection cut after the server committed just means the retry comes back
  ``duplicate`` — nothing lost, nothing stored twice;
- a failed upload (connection refused or cut, timeout, 5xx, 429, 409) waits
  ``uniform(0, min(cap, base * 2**(failures-1)))`` seconds ("full jitter": a fleet of devices
  coming back after an outage does not hammer the server in step), at least what the
  server's ``Retry-After`` asks;
- a batch the server refuses as a whole (400, 413, 422) is split in halves until the bad
  event is alone, which is then set aside as dead — one bad event never blocks the queue;
- nothing is kept in memory between batches, so a restarted agent resumes from the queue.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ..errors import InputError, VisageError
from .events import DeviceInfo, EdgeEvent, Receipt
from .queue import EventQueue, QueuedEvent, QueueStats

log = logging.getLogger(__name__)


class UplinkUnavailable(VisageError):
    """The server could not be reached or asked to wait; retry later (``retry_after`` s)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class UplinkDenied(VisageError):
    """The server refused the key or does not know the collection (401/403/404): events stay
    queued until an operator fixes the configuration."""


class UplinkRejected(InputError):
    """The server refused a whole request as invalid (400/413/422); retrying it cannot help."""


class Uplink(Protocol):
    """How an agent talks to its server."""

    def post_events(
        self, collection: str, device: DeviceInfo, events: Sequence[bytes], queue: QueueStats
    ) -> list[Receipt]:
        """Upload event payloads (JSON bytes of :meth:`EdgeEvent.to_bytes`); one receipt each."""
        ...

    def fetch_snapshot(
        self, collection: str, device: DeviceInfo, *, ttl_s: int | None = None
    ) -> bytes:
        """The server's signed snapshot document for ``collection``."""
        ...

    def public_key(self) -> str:
        """The server's snapshot signing key (``ed25519:…``), for pinning on first use."""
        ...


# ---------------------------------------------------------------------- HTTP


class HttpUplink:
    """An :class:`Uplink` over HTTP to ``visage serve`` with a device key.

    ``bytes_sent`` / ``bytes_received`` count HTTP request and response bytes (start line,
    headers, body; not TCP or TLS overhead), for the bandwidth figures.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self._client.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
        headers = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        self.bytes_sent += len(head) + headers + 2 + len(request.content)
        try:
            response = self._client.send(request)
        except httpx.TransportError as exc:
            raise UplinkUnavailable(f"cannot reach the server: {exc!r}") from None
        self.bytes_received += len(response.content) + sum(
            len(k) + len(v) + 4 for k, v in response.headers.raw
        )
        status = response.status_code
        if status in (401, 403, 404):
            raise UplinkDenied(
                f"the server refused the key or collection ({status}): {_detail(response)}"
            )
        if status in (400, 413, 422):
            raise UplinkRejected(f"server refused the request ({status}): {_detail(response)}")
        if status >= 400:
            retry = response.headers.get("retry-after")
            raise UplinkUnavailable(
                f"server answered {status}: {_detail(response)}",
                retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
            )
        return response

    def post_events(
        self, collection: str, device: DeviceInfo, events: Sequence[bytes], queue: QueueStats
    ) -> list[Receipt]:
        head = json.dumps(
            {
                "device": {"id": device.id, "agent_version": device.agent_version},
                "queue": {"pending": queue.pending, "dead": queue.dead, "dropped": queue.dropped},
            },
            separators=(",", ":"),
        )
        body = head[:-1].encode() + b',"events":[' + b",".join(events) + b"]}"
        request = self._client.build_request(
            "POST",
            "/v1/edge/events",
            params={"collection": collection},
            content=body,
            headers={"Content-Type": "application/json"},
        )
        doc = self._send(request).json()
        return [
            Receipt(r["key"], r["status"], r.get("person_id"), r.get("reason"))
            for r in doc["receipts"]
        ]

    def fetch_snapshot(
        self, collection: str, device: DeviceInfo, *, ttl_s: int | None = None
    ) -> bytes:
        params: dict[str, Any] = {
            "collection": collection,
            "device": device.id,
            "agent_version": device.agent_version,
        }
        if ttl_s is not None:
            params["ttl_s"] = ttl_s
        return self._send(
            self._client.build_request("GET", "/v1/edge/snapshot", params=params)
        ).content

    def public_key(self) -> str:
        return str(
            self._send(self._client.build_request("GET", "/v1/edge/public-key")).json()["key"]
        )


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]


# ---------------------------------------------------------------------- in memory


@dataclass
class MemoryUplink:
    """An in-memory server for tests: stores events by key (deduplicating), serves a snapshot.

    ``down``: every call fails as unreachable. ``fail_after_store``: that many uploads are
    stored and then reported as a lost connection (the server committed; the device never
    heard). ``snapshot``/``key``: what :meth:`fetch_snapshot` and :meth:`public_key` return.
    """

    dim: int = 128
    down: bool = False
    fail_after_store: int = 0
    snapshot: bytes = b""
    key: str = ""
    stored: dict[str, EdgeEvent] = field(default_factory=dict)
    uploads: int = 0

    def post_events(
        self, collection: str, device: DeviceInfo, events: Sequence[bytes], queue: QueueStats
    ) -> list[Receipt]:
        if self.down:
            raise UplinkUnavailable("memory uplink is down")
        self.uploads += 1
        receipts = []
        for payload in events:
            doc = json.loads(payload)
            try:
                event = EdgeEvent.from_json(doc, dim=self.dim)
            except InputError as exc:
                receipts.append(Receipt(str(doc.get("key")), "rejected", reason=str(exc)))
                continue
            status = "duplicate" if event.key in self.stored else "stored"
            self.stored.setdefault(event.key, event)
            person = event.decision.person_id if event.decision else None
            receipts.append(Receipt(event.key, status, person))
        if self.fail_after_store > 0:
            self.fail_after_store -= 1
            raise UplinkUnavailable("memory uplink: connection lost after the server stored")
        return receipts

    def fetch_snapshot(
        self, collection: str, device: DeviceInfo, *, ttl_s: int | None = None
    ) -> bytes:
        if self.down:
            raise UplinkUnavailable("memory uplink is down")
        return self.snapshot

    def public_key(self) -> str:
        if self.down:
            raise UplinkUnavailable("memory uplink is down")
        return self.key


# ---------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits ``U(0, min(cap, base*2**(n-1)))``."""

    base: float = 0.5
    cap: float = 60.0

    def delay(self, failures: int, rng: random.Random, *, at_least: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        return max(rng.uniform(0.0, ceiling), at_least or 0.0)


@dataclass(frozen=True)
class SyncReport:
    """What a sync pass did: events ``delivered`` (stored or duplicate), ``duplicates`` among
    them, ``dead`` set aside, uploads ``failed``, and what is still ``pending``."""

    delivered: int
    duplicates: int
    dead: int
    failed: int
    pending: int


class Syncer:
    """Moves queued events to the uplink; one instance per queue, driven by one thread."""

    def __init__(
        self,
        queue: EventQueue,
        uplink: Uplink,
        collection: str,
        device: DeviceInfo,
        *,
        batch_size: int = 50,
        batch_bytes: int = 512 * 1024,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.uplink = uplink
        self.collection = collection
        self.device = device
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.failures = 0
        """Consecutive failed uploads (resets on success); drives the backoff."""
        self._totals = {"delivered": 0, "duplicates": 0, "dead": 0, "failed": 0}

    def _upload(self, batch: Sequence[QueuedEvent]) -> None:
        """Upload one batch, splitting it when the server refuses it whole."""
        try:
            receipts = self.uplink.post_events(
                self.collection, self.device, [e.payload for e in batch], self.queue.stats()
            )
        except UplinkRejected as exc:
            if len(batch) == 1:
                self.queue.bury(batch[0].key, str(exc))
                self._totals["dead"] += 1
                return
            half = len(batch) // 2
            self._upload(batch[:half])
            self._upload(batch[half:])
            return
        by_key = {r.key: r for r in receipts}
        delivered = [e.key for e in batch if e.key in by_key and by_key[e.key].delivered]
        self.queue.ack(delivered)
        self._totals["delivered"] += len(delivered)
        self._totals["duplicates"] += sum(by_key[k].status == "duplicate" for k in delivered)
        for e in batch:
            receipt = by_key.get(e.key)
            if receipt is not None and receipt.status == "rejected":
                self.queue.bury(e.key, receipt.reason or "rejected by the server")
                self._totals["dead"] += 1
        unanswered = [e.key for e in batch if e.key not in by_key]
        if unanswered:
            self.queue.attempted(unanswered)

    def sync_once(self) -> int:
        """Upload the oldest batch; returns how many events it held (0: the queue is empty).

        Events past their expiry and dead ones past their retention are deleted first.

        Raises :class:`UplinkUnavailable` / :class:`UplinkDenied` when the upload failed (the
        events stay queued, their attempt counted).
        """
        self.queue.expire()
        batch = self.queue.batch(limit=self.batch_size, max_bytes=self.batch_bytes)
        if not batch:
            return 0
        try:
            self._upload(batch)
        except (UplinkUnavailable, UplinkDenied):
            self.queue.attempted([e.key for e in batch])
            self.failures += 1
            self._totals["failed"] += 1
            raise
        self.failures = 0
        return len(batch)

    def wait_time(self, exc: VisageError) -> float:
        """How long to wait after a failure: the backoff, or longer when the server asked."""
        asked = exc.retry_after if isinstance(exc, UplinkUnavailable) else None
        if isinstance(exc, UplinkDenied):
            return self.backoff.cap
        return self.backoff.delay(self.failures, self._rng, at_least=asked)

    def report(self) -> SyncReport:
        return SyncReport(pending=self.queue.stats().pending, **self._totals)

    def run(
        self,
        stop: threading.Event,
        *,
        wake: threading.Event | None = None,
        idle_s: float = 1.0,
        until_empty: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> SyncReport:
        """Sync until ``stop`` is set (or, with ``until_empty``, the queue is empty).

        ``wake`` shortens the idle wait when new events arrive; ``on_idle`` runs whenever the
        queue is empty (the agent refreshes its snapshot there).
        """
        while not stop.is_set():
            try:
                sent = self.sync_once()
            except (UplinkUnavailable, UplinkDenied) as exc:
                delay = self.wait_time(exc)
                log.warning(
                    "edge upload failed (%d in a row): %s; retrying in %.1f s",
                    self.failures,
                    exc,
                    delay,
                )
                stop.wait(delay)
                continue
            if sent:
                continue
            if on_idle is not None:
                on_idle()
            if until_empty:
                break
            if wake is not None:
                wake.wait(idle_s)
                wake.clear()
            else:
                stop.wait(idle_s)
        return self.report()


def drain(syncer: Syncer, *, timeout_s: float) -> SyncReport:
    """Sync until the queue is empty or ``timeout_s`` passed (backing off between failures)."""
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.daemon = True
    timer.start()
    try:
        return syncer.run(stop, until_empty=True)
    finally:
        timer.cancel()
