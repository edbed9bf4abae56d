"""``POST /v1/collections/{collection}/identify`` and ``…/find-similar``: 1:N searches for
every face of a photo (or every embedding sent), each audited with the caller's purpose."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...gallery import Gallery, PoorQuality
from ..bodies import PROBES_BODY, Upload
from ..deps import (
    CollectionPath,
    EventsDep,
    GalleryDep,
    IdentifyKey,
    MetricsDep,
    PipelineDep,
    ProbesBody,
    RequiredPurpose,
    SettingsDep,
    disclosure,
)
from ..events import EventLog
from ..probes import Probes, face_limit_audited, read_probes
from ..problems import problem_responses
from ..runtime import ServicePipeline
from ..schemas import (
    EmbeddingsIn,
    FaceOut,
    FindSimilarOut,
    IdentifiedFace,
    IdentifyOut,
    SimilarFaces,
    SimilarOut,
)

router = APIRouter(
    prefix="/v1/collections/{collection}", tags=["decisions"], responses=problem_responses()
)

K = Annotated[int, Query(ge=1, le=100, description="How many candidates per face")]
MinQuality = Annotated[
    float,
    Query(ge=0, le=1, description="Faces below this quality score are reported, not searched"),
]


@router.post("/identify", response_model=IdentifyOut, openapi_extra=PROBES_BODY)
def identify(
    key: IdentifyKey,
    collection: CollectionPath,
    body: ProbesBody,
    purpose: RequiredPurpose,
    gallery: GalleryDep,
    pipeline: PipelineDep,
    events: EventsDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    k: K = 5,
    min_quality: MinQuality = 0.0,
) -> IdentifyOut:
    """Who is in this photo? For every face, the ``k`` nearest consented persons and
    ``unknown`` unless the nearest is within the calibrated threshold. A key without the
    ``enroll`` scope sees only the candidates within the threshold."""
    with face_limit_audited(gallery, "identify", actor=key.id, collection=collection,
                            purpose=purpose):
        probes = _probes(body, collection, gallery, pipeline, settings.max_faces)
    metrics.faces.labels("identify").inc(len(probes.items))
    faces: list[IdentifiedFace] = []
    for probe in probes.items:
        shown = FaceOut.from_face(probe.face) if probe.face is not None else None
        try:
            found = gallery.identify(
                collection, probe.query, k=k, min_quality=min_quality, purpose=purpose,
                actor=key.id, disclose=disclosure(key), input_hash=probe.photo_sha256,
            )
        except PoorQuality as exc:
            faces.append(IdentifiedFace(index=probe.index, face=shown,
                                        skipped="; ".join(exc.reasons), audit_seq=exc.audit_seq))
            continue
        faces.append(IdentifiedFace.from_identification(probe.index, shown, found))
    return IdentifyOut(
        faces=faces,
        audit_seq=_no_face_event(probes, "identify", key.id, collection, purpose, events),
    )


@router.post("/find-similar", response_model=FindSimilarOut, openapi_extra=PROBES_BODY)
def find_similar(
    key: IdentifyKey,
    collection: CollectionPath,
    body: ProbesBody,
    purpose: RequiredPurpose,
    gallery: GalleryDep,
    pipeline: PipelineDep,
    events: EventsDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=1000, description="How many templates per face")] = 10,
) -> FindSimilarOut:
    """The ``k`` templates nearest to every face (several may belong to one person): a search
    for review, with distances and no decision. A key without the ``enroll`` scope sees only
    the templates within the calibrated threshold."""
    with face_limit_audited(gallery, "find_similar", actor=key.id, collection=collection,
                            purpose=purpose):
        probes = _probes(body, collection, gallery, pipeline, settings.max_faces)
    metrics.faces.labels("find_similar").inc(len(probes.items))
    faces = [
        SimilarFaces(
            index=probe.index,
            face=FaceOut.from_face(probe.face) if probe.face is not None else None,
            similar=[
                SimilarOut.model_validate(s)
                for s in gallery.find_similar(
                    collection, probe.query, k=k, purpose=purpose, actor=key.id,
                    disclose=disclosure(key), input_hash=probe.photo_sha256,
                )
            ],
        )
        for probe in probes.items
    ]
    return FindSimilarOut(
        faces=faces,
        audit_seq=_no_face_event(probes, "find_similar", key.id, collection, purpose, events),
    )


def _probes(
    body: Upload | EmbeddingsIn,
    collection: str,
    gallery: Gallery,
    pipeline: ServicePipeline,
    max_faces: int,
) -> Probes:
    """The request's probes; for a photo the collection is looked up first, so an unknown one
    is a 404 before any embedding is computed."""
    if isinstance(body, Upload):
        gallery.require_collection(collection)
    return read_probes(body, pipeline, max_faces=max_faces)


def _no_face_event(
    probes: Probes, action: str, actor: str, collection: str, purpose: str, events: EventLog
) -> int | None:
    """A photo without faces reaches no gallery search; its call is audited here instead."""
    if probes.items:
        return None
    return events.record(
        action,
        actor=actor,
        collection=collection,
        purpose=purpose,
        input_hash=probes.sha256,
        faces=0,
    )
