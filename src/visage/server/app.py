"""The app factory: ``create_app(settings)`` builds the FastAPI app; models, store and gallery
open in its lifespan (never at import), so building an app is cheap and side-effect free.

    uvicorn --factory visage.server.app:create_app    # or: visage serve
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from .. import __version__
from . import auth, problems
from .bodies import COMPONENT_SCHEMAS
from .headers import SecurityHeaders
from .limits import BodyLimit
from .metrics import Metrics, RequestMetrics
from .routes import ROUTERS
from .services import open_services
from .settings import Settings, load_settings

DESCRIPTION = """Self-hosted, accountable face recognition.

Send an API key as `Authorization: Bearer <key>` (create one with `visage keys create`).
Scopes: `identify` (detect, verify, identify, find-similar, group), `enroll` (persons, consent,
faces), `device` (edge agents: post events, pull offline snapshots), `admin` (everything, plus
collections and the audit log). Every error is an RFC 7807
`application/problem+json` document. Every call that touches biometric data is written to the
hash-chained audit log with the key as actor and the `purpose` you state.
"""


def _operation_id(route: APIRoute) -> str:
    """The handler's name: stable, so generated clients keep their method names."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    """The Visage HTTP service for ``settings`` (default: environment, config file, defaults)."""
    settings = settings if settings is not None else load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(open_services, settings, metrics)
        # Requests beyond this many wait their turn in arrival order (anyio's limiter is fair),
        # rather than racing for the gallery's lock, which starved some of them for seconds.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        app.state.services = services
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(services.close)

    # /docs and /redoc from assets packaged in fastapi-offline, not a CDN: a self-hosted face
    # service often runs where no CDN can be reached.
    app = FastAPIOffline(
        title="Visage",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    problems.install(app)
    auth.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            problems.add_problem_schema(schema)
            schema["components"]["schemas"].update(COMPONENT_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
