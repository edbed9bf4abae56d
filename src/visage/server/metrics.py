"""Prometheus metrics: requests and latencies per route, faces processed, gallery sizes.

Each app has its own registry (several apps in one process, as in tests, do not collide).
Routes are labelled by their path template (``/v1/collections/{collection}/identify``), never
by the raw path, so label cardinality stays bounded; unmatched paths share one label.
Gallery sizes (collection names, persons, templates) are read from the store when scraped and
shown only to an admin key that sees every collection: an open endpoint must not list tenants.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import VisageError
from ..gallery import CollectionInfo

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _GallerySizes(Collector):
    """Persons and templates per collection, counted at scrape time."""

    def __init__(self, sizes: Callable[[], list[CollectionInfo]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        persons = GaugeMetricFamily(
            "visage_gallery_persons", "Persons per collection", labels=["collection"]
        )
        templates = GaugeMetricFamily(
            "visage_gallery_templates", "Templates per collection", labels=["collection"]
        )
        try:
            for info in self._sizes():
                persons.add_metric([info.name], info.persons)
                templates.add_metric([info.name], info.templates)
        except VisageError as exc:
            log.warning("gallery sizes unavailable for /metrics: %s", exc)
        yield persons
        yield templates


class Metrics:
    """The app's registry and the metrics the middleware and routes update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gallery = CollectorRegistry()
        self.requests = Counter(
            "visage_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "visage_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces = Counter(
            "visage_faces_processed",
            "Faces detected in photos or received as embeddings, by operation",
            ["operation"],
            registry=self.registry,
        )

    def watch_gallery(self, sizes: Callable[[], list[CollectionInfo]]) -> None:
        """Report gallery sizes from ``sizes`` on every scrape that may see them."""
        self.gallery.register(_GallerySizes(sizes))

    def render(self, *, gallery: bool = False) -> bytes:
        """The text exposition format; gallery sizes per collection too when ``gallery``."""
        text = generate_latest(self.registry)
        return text + generate_latest(self.gallery) if gallery else text


class RequestMetrics:
    """ASGI middleware counting requests and timing them per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
