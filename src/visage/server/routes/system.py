"""``/healthz`` (the process answers), ``/readyz`` (models loaded, store up), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST

from ...errors import VisageError
from ..auth import Requires, authenticate, ensure_sees
from ..deps import MetricsDep, ServicesDep
from ..keys_store import Scope
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
    """Readiness: models are loaded and the store answers; 503 otherwise. Open, so it names
    no collection and counts nothing stored (keys included)."""
    try:
        services.keys.active_count()
    except VisageError as exc:
        raise NotReady(f"gallery store unreachable: {exc}") from exc
    return HealthOut(status="ready", checks={"models": services.pipeline.model_id, "store": "ok"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **problem_responses([401, 403, 429]),
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request, metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per route and faces processed, for anyone;
    gallery sizes per collection only with an admin key that sees every collection (the
    key is optional, so the schema declares no security here)."""
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if token:
        credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
        ensure_sees(Requires(Scope.ADMIN).check(request, authenticate(request, credentials)), None)
    return Response(metrics.render(gallery=bool(token)), media_type=CONTENT_TYPE_LATEST)
