"""``/healthz`` (the process answers), ``/readyz`` (models loaded, store up), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...errors import VisageError
from ..deps import MetricsDep, ServicesDep
from ..problems import NotReady, problem_responses
from ..schemas import HealthOut

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Liveness: the process is up and serving requests (no checks, and no request thread, so
    it answers even while every thread is busy)."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses=problem_responses([503]))
def readyz(services: ServicesDep) -> HealthOut:
    """Readiness: models are loaded and the store answers; 503 otherwise."""
    try:
        keys = services.keys.active_count()
    except VisageError as exc:
        raise NotReady(f"gallery store unreachable: {exc}") from exc
    return HealthOut(
        status="ready",
        checks={
            "models": services.pipeline.model_id,
            "store": "ok",
            "active_keys": str(keys),
        },
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per route, faces processed, gallery sizes."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
