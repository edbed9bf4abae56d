"""``POST /v1/verify``: is this the same person? Two photos, or a photo and an enrolled person."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query

from ...api import compare
from ...errors import InputError, ModelError, NotFound
from ...imageio import source_hash
from ...pipeline import Face, FacePick, pick_face
from ..bodies import PAIR_BODY, Upload
from ..deps import (
    EventsDep,
    FaceQuery,
    GalleryDep,
    IdentifyKey,
    MetricsDep,
    OtherFaceQuery,
    PhotoPairBody,
    PipelineDep,
    RequiredPurpose,
    face_pick,
)
from ..probes import face_limit_audited
from ..problems import problem_responses
from ..runtime import ServicePipeline
from ..schemas import BoxOut, CalibrationOut, VerifyOut

router = APIRouter(prefix="/v1", tags=["decisions"], responses=problem_responses())


def _face(pipeline: ServicePipeline, upload: Upload, face: FacePick, label: str) -> Face:
    image = pipeline.load(upload.data)
    return pick_face(pipeline.embed(image), face, image.shape[1], image.shape[0], label)


@router.post("/verify", response_model=VerifyOut, openapi_extra=PAIR_BODY)
def verify(
    key: IdentifyKey,
    photos: PhotoPairBody,
    gallery: GalleryDep,
    pipeline: PipelineDep,
    events: EventsDep,
    metrics: MetricsDep,
    purpose: RequiredPurpose,
    collection: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Collection of `person`")
    ] = None,
    person: Annotated[
        str | None, Query(min_length=1, max_length=300, description="Person id or external id")
    ] = None,
    face: FaceQuery = None,
    other_face: OtherFaceQuery = None,
) -> VerifyOut:
    """Distance, decision and calibrated threshold: between a face of each of two photos, or
    between the photo's face and the best template of an enrolled, consented person. A photo
    with several faces is refused unless `face` (for `photo`) / `other_face` picks one; the
    answer names the box used in each photo."""
    photo, other = photos
    if other is not None:
        if collection is not None or person is not None:
            raise InputError(
                "compare two photos, or a photo with a collection and person, not both"
            )
        with face_limit_audited(gallery, "compare", actor=key.id, collection=None,
                                purpose=purpose):
            a = _face(pipeline, photo, face_pick(face), "photo")
            b = _face(pipeline, other, face_pick(other_face), "other_photo")
        metrics.faces.labels("verify").inc(2)
        result = compare(a, b, calibration=gallery.calibration(pipeline.model_id))
        both = hashlib.sha256(
            (source_hash(photo.data) + source_hash(other.data)).encode()
        ).hexdigest()
        seq = events.record(
            "compare",
            actor=key.id,
            purpose=purpose,
            input_hash=both,
            distance=round(result.distance, 6),
            same=result.same,
            threshold=result.threshold,
        )
        return VerifyOut.from_comparison(result, seq, BoxOut.of(a.box), BoxOut.of(b.box))
    if collection is None or person is None:
        raise InputError(
            "send a second photo (multipart field other_photo), or name the "
            "collection and person to verify against"
        )
    found = gallery.verify(
        collection, person, photo.data, face=face_pick(face), purpose=purpose, actor=key.id
    )
    metrics.faces.labels("verify").inc()
    return VerifyOut(
        distance=found.distance,
        same=found.same,
        threshold=found.threshold,
        threshold_source=found.threshold_source,
        target_fmr=found.target_fmr,
        expected_fnmr=found.expected_fnmr,
        person_id=found.person_id,
        template_id=found.template_id,
        audit_seq=found.audit_seq,
    )


@router.get(
    "/calibrations/{model_id}", response_model=CalibrationOut, responses=problem_responses([404])
)
def calibration(_key: IdentifyKey, gallery: GalleryDep, model_id: str) -> CalibrationOut:
    """The calibration record decisions use for ``model_id`` (e.g. ``dlib_resnet_v1``): the
    data it was measured on and how many pairs back it. 404 for a model with none."""
    try:
        return CalibrationOut.model_validate(gallery.calibration(model_id))
    except ModelError:
        raise NotFound(f"no calibration for model {model_id!r}") from None
