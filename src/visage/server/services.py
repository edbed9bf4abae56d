"""What the app holds while it runs — gallery, key store, event log, pipeline, rate limiters —
opened in the lifespan, never at import, and closed when the server stops."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..gallery import Gallery
from .auth import FailureLimit, RateLimiter, SecurityLog
from .evaluation import LastReport, report_folder
from .events import EventLog
from .keys_store import KeyStore
from .metrics import Metrics
from .runtime import ServicePipeline
from .settings import Settings

SERVER_ACTOR = "server"
"""The gallery's default audit actor; every route passes its caller's key id instead."""


@dataclass
class Services:
    """The running app's state; routes reach it through :mod:`visage.server.deps`."""

    settings: Settings
    gallery: Gallery
    keys: KeyStore
    events: EventLog
    pipeline: ServicePipeline
    limiter: RateLimiter
    metrics: Metrics
    security: SecurityLog
    failures: FailureLimit
    evaluations: LastReport = field(default_factory=LastReport)
    """The last ``POST /v1/eval/verify`` or ``/identify`` report, on disk beside the store (so
    every worker answers it) or in this process's memory; photos are never kept."""

    def close(self) -> None:
        """Save index snapshots and release the database connections."""
        self.gallery.close()


def open_services(settings: Settings, metrics: Metrics) -> Services:
    """Load the models, open (and migrate) the store and the gallery; blocking, seconds."""
    pipeline = ServicePipeline(
        detector=settings.detector,
        runtime=settings.runtime,
        upsample=settings.upsample,
        max_pixels=settings.max_pixels,
        max_faces=settings.max_faces,
    )
    pipeline.warm()
    gallery = Gallery(
        settings.db_url,
        index=settings.index,
        pipeline=pipeline,
        actor=SERVER_ACTOR,
        anchors=settings.audit_anchors,
    )
    metrics.watch_gallery(gallery.collections)
    return Services(  # one store per process: one pool, migrations checked once
        settings=settings,
        gallery=gallery,
        keys=KeyStore(gallery.store),
        events=EventLog(gallery.store),
        pipeline=pipeline,
        limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
        metrics=metrics,
        security=SecurityLog(),
        failures=FailureLimit(settings.auth_failures_per_minute),
        evaluations=LastReport(report_folder(settings.db_url, settings.eval_reports)),
    )
