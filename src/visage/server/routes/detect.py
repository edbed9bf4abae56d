"""``POST /v1/detect``: the faces in a photo, with boxes, landmarks, quality and, on request,
embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...imageio import source_hash
from ..bodies import PHOTO_BODY
from ..deps import EventsDep, GalleryDep, IdentifyKey, MetricsDep, PhotoBody, PipelineDep, Purpose
from ..probes import face_limit_audited
from ..problems import problem_responses
from ..schemas import DetectOut, FaceOut

router = APIRouter(prefix="/v1", tags=["faces"], responses=problem_responses())


@router.post("/detect", response_model=DetectOut, openapi_extra=PHOTO_BODY)
def detect(
    key: IdentifyKey,
    photo: PhotoBody,
    pipeline: PipelineDep,
    events: EventsDep,
    gallery: GalleryDep,
    metrics: MetricsDep,
    purpose: Purpose = None,
    embeddings: Annotated[bool, Query(description="Include each face's embedding")] = False,
) -> DetectOut:
    """Every face in the photo, largest first: box, five landmarks, detector score, quality."""
    image = pipeline.load(photo.data)
    with face_limit_audited(gallery, "detect", actor=key.id, collection=None, purpose=purpose):
        faces = pipeline.embed(image) if embeddings else pipeline.detect(image)
    metrics.faces.labels("detect").inc(len(faces))
    seq = events.record(
        "detect",
        actor=key.id,
        purpose=purpose,
        input_hash=source_hash(photo.data),
        faces=len(faces),
        embeddings=embeddings,
    )
    return DetectOut(
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        audit_seq=seq,
        faces=[FaceOut.from_face(f, embedding=embeddings) for f in faces],
    )
