"""What the app holds while it runs — gallery, key store, event log, pipeline, rate limiters —
opened in the lifespan, never at import, and closed when the server stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from ..gallery import Gallery
from ..pipeline import threads_per_worker
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


def numpy_blas_one_thread() -> int:
    """Give numpy's BLAS one thread in this server process; how many libraries it limited.

    A server's parallelism is its requests. With a BLAS thread per core, every exact search's
    matrix-vector product (numpy; OpenBLAS splits all but the smallest) woke the whole team,
    which then spun waiting for more: one connection kept both cores busy, and 16 connections
    on a 100k-template exact gallery got 98-110 req/s; with one thread, 160-179
    (docs/performance-service.md). Only the BLAS shipped inside numpy's own package is limited:
    faiss's BLAS and OpenMP teams keep their threads for index builds and batch searches."""
    package = Path(np.__file__).resolve().parent
    shipped = (package, package.parent / "numpy.libs")  # where numpy's wheels keep their BLAS
    ours = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers
            if any(Path(lib.filepath).resolve().is_relative_to(d) for d in shipped)]  # fmt: skip
    for lib in ours:
        lib.set_num_threads(1)
    return len(ours)


def open_services(settings: Settings, metrics: Metrics) -> Services:
    """Load the models, open (and migrate) the store and the gallery; blocking, seconds."""
    numpy_blas_one_thread()
    pipeline = ServicePipeline(
        detector=settings.detector,
        runtime=settings.runtime,
        upsample=settings.upsample,
        max_pixels=settings.max_pixels,
        max_faces=settings.max_faces,
        threads=threads_per_worker(settings.workers),
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
