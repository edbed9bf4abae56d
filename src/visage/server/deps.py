"""``Annotated`` dependency aliases, so route signatures read like data.

The dependencies that only read the app's state are ``async``: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop each (with seven of them an identify spent ~1.6 ms
of the event loop's CPU per request handing work to threads); only those that block (the key
lookup, the routes themselves) take the hop.

``IdentifyKey`` / ``EnrollKey`` / ``AdminKey`` authenticate the caller and check the scope and
the collection named by the route (see :mod:`visage.server.auth`); the body aliases read the
photo or JSON forms a route accepts (see :mod:`visage.server.bodies`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..gallery import Gallery
from ..gallery.service import Disclosure
from ..pipeline import FacePick, parse_face_pick
from . import bodies
from .auth import Requires, authenticate
from .events import EventLog
from .keys_store import ApiKey, Scope
from .metrics import Metrics
from .problems import UnsupportedMediaType
from .runtime import ServicePipeline
from .schemas import BulkIn, EmbeddingIn, EmbeddingsIn
from .services import Services
from .settings import Settings


async def get_services(request: Request) -> Services:
    """The running app's services (set by the lifespan)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_gallery(services: ServicesDep) -> Gallery:
    return services.gallery


async def get_pipeline(services: ServicesDep) -> ServicePipeline:
    return services.pipeline


async def get_events(services: ServicesDep) -> EventLog:
    return services.events


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_metrics(services: ServicesDep) -> Metrics:
    return services.metrics


GalleryDep = Annotated[Gallery, Depends(get_gallery)]
PipelineDep = Annotated[ServicePipeline, Depends(get_pipeline)]
EventsDep = Annotated[EventLog, Depends(get_events)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

AnyKey = Annotated[ApiKey, Depends(authenticate)]
IdentifyKey = Annotated[ApiKey, Depends(Requires(Scope.IDENTIFY))]
EnrollKey = Annotated[ApiKey, Depends(Requires(Scope.ENROLL))]
AdminKey = Annotated[ApiKey, Depends(Requires(Scope.ADMIN))]
CollectionKey = Annotated[ApiKey, Depends(Requires(None))]
"""Any scope, but the key must see the collection the route names."""


async def require_json(request: Request) -> None:
    """415 for a body sent with a content type other than JSON (a route-level dependency)."""
    media = bodies.media_type(request)
    if media and media != bodies.JSON and not media.endswith("+json"):
        raise UnsupportedMediaType(media, [bodies.JSON])


JsonOnly = Depends(require_json)

CollectionPath = Annotated[str, Path(min_length=1, max_length=200, description="Collection name")]
PersonPath = Annotated[
    str, Path(min_length=1, max_length=300, description="Person id, or your external id for them")
]
Purpose = Annotated[
    str | None,
    Query(
        min_length=1, max_length=300, description="Why this call is made (kept in the audit log)"
    ),
]
RequiredPurpose = Annotated[
    str,
    Query(min_length=1, max_length=300, description="Why this search is made (required; audited)"),
]
_FACE_PICK = r"^(largest|center|[0-9]{1,4})$"
FaceQuery = Annotated[
    str | None,
    Query(
        pattern=_FACE_PICK,
        description="Which face of a photo with several: largest, center, or an index "
        "(0 = largest). Without it such a photo is refused.",
    ),
]
OtherFaceQuery = Annotated[
    str | None,
    Query(pattern=_FACE_PICK, description="Which face of `other_photo`, as `face` is for `photo`"),
]

PhotoBody = Annotated[bodies.Upload, Depends(bodies.photo)]
PhotoPairBody = Annotated[tuple[bodies.Upload, bodies.Upload | None], Depends(bodies.photo_pair)]
ProbesBody = Annotated[bodies.Upload | EmbeddingsIn, Depends(bodies.probes)]
TemplateBody = Annotated[bodies.Upload | EmbeddingIn, Depends(bodies.template)]
GroupBody = Annotated[bodies.PhotoBatch | EmbeddingsIn, Depends(bodies.photo_batch)]
BulkBody = Annotated[bodies.PhotoBatch | BulkIn, Depends(bodies.enrollment_batch)]
EvalBody = Annotated[bodies.EvalUpload, Depends(bodies.eval_upload)]
IdentifyEvalBody = Annotated[bodies.IdentifyUpload, Depends(bodies.identify_upload)]


def face_pick(value: str | None) -> FacePick:
    """The gallery's face pick from the ``face`` query parameter (validated by its pattern)."""
    return parse_face_pick(value)


def disclosure(key: ApiKey) -> Disclosure:
    """What a key's searches may name: every candidate for a key that may list persons anyway
    (``enroll`` or ``admin``), only the matches within the threshold for any other."""
    return "all" if key.allows(Scope.ENROLL) else "matches"
