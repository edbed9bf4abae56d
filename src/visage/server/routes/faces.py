"""Enrollment: ``…/persons/{person}/faces`` (one photo or embedding) and
``/v1/collections/{collection}/faces/bulk`` (many photos, a result per photo)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Response

from ...errors import InputError, VisageError
from ...gallery import EmbeddingItem
from ...store import MAX_INTEGER
from ..bodies import BULK_BODY, TEMPLATE_BODY, Upload
from ..deps import (
    BulkBody,
    CollectionPath,
    EnrollKey,
    FaceQuery,
    GalleryDep,
    MetricsDep,
    PersonPath,
    Purpose,
    SettingsDep,
    TemplateBody,
    face_pick,
)
from ..probes import check_batch
from ..problems import Problem, problem_body, problem_responses
from ..schemas import (
    BulkIn,
    BulkItemOut,
    BulkOut,
    EnrollOut,
    RemovedOut,
    TemplateList,
    TemplateOut,
)

router = APIRouter(
    prefix="/v1/collections/{collection}", tags=["faces"], responses=problem_responses()
)


@router.post(
    "/persons/{person}/faces",
    status_code=201,
    response_model=EnrollOut,
    openapi_extra=TEMPLATE_BODY,
)
def enroll_face(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    body: TemplateBody,
    gallery: GalleryDep,
    metrics: MetricsDep,
    face: FaceQuery = None,
    purpose: Purpose = None,
) -> EnrollOut:
    """Add a template to a consented person from a photo (one face, or the one ``face`` picks;
    it must pass the quality gate) or an embedding. The same source again returns the same
    template with ``created`` false."""
    if isinstance(body, Upload):
        result = gallery.enroll(
            collection, person, body.data, face=face_pick(face), purpose=purpose, actor=key.id
        )
    else:
        item = EmbeddingItem(person, np.asarray(body.embedding, np.float32), body.quality)
        result = gallery.enroll_many(collection, [item], purpose=purpose, actor=key.id)[0]
    metrics.faces.labels("enroll").inc()
    return EnrollOut.model_validate(result)


@router.get("/persons/{person}/faces", response_model=TemplateList)
def list_faces(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> TemplateList:
    """The person's enrolled faces (templates), oldest first, without their embeddings
    (audited: ``person.read``)."""
    found = gallery.templates(collection, person, reader=key.id, purpose=purpose)
    return TemplateList(items=[TemplateOut.model_validate(t) for t in found])


TemplateId = Annotated[int, Path(ge=1, le=MAX_INTEGER, description="The template's id")]


@router.get(
    "/persons/{person}/faces/{template_id}/image",
    response_class=Response,
    responses={200: {"description": "The photo as enrolled", "content": {"image/*": {}}}},
)
def face_image(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    template_id: TemplateId,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> Response:
    """The photo a template was enrolled from, in a collection that keeps images (404
    otherwise), never cached (audited: ``person.read`` of ``image``)."""
    kept = gallery.template_image(collection, person, template_id, reader=key.id, purpose=purpose)
    return Response(kept.data, media_type=kept.media_type, headers={"Cache-Control": "no-store"})


@router.delete("/persons/{person}/faces/{template_id}", response_model=RemovedOut)
def delete_face(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    template_id: TemplateId,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> RemovedOut:
    """Delete one enrolled face, from store and index at once."""
    gallery.delete_template(collection, person, template_id, purpose=purpose, actor=key.id)
    return RemovedOut(templates_removed=1)


@router.post("/faces/bulk", response_model=BulkOut, openapi_extra=BULK_BODY)
def enroll_bulk(
    key: EnrollKey,
    collection: CollectionPath,
    body: BulkBody,
    gallery: GalleryDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    face: FaceQuery = None,
    purpose: Purpose = None,
) -> BulkOut:
    """Enroll many photos, each for its ``person`` field (or one person for all); every photo
    gets its own result or problem and the batch goes on. Embeddings sent as JSON items are
    enrolled in one transaction instead: all of them, or none and one problem."""
    if isinstance(body, BulkIn):
        check_batch(len(body.items), settings.max_batch)  # multipart: checked while parsing
        return _enroll_embeddings(key.id, collection, body, gallery, metrics, purpose)
    if not body.photos:
        raise InputError("send photos in the multipart field 'photos'")
    persons = body.persons * len(body.photos) if len(body.persons) == 1 else body.persons
    if len(persons) != len(body.photos):
        raise InputError(
            f"{len(body.photos)} photos and {len(body.persons)} person fields: "
            "send one person for all photos, or one per photo"
        )
    gallery.require_collection(collection)
    items: list[BulkItemOut] = []
    for number, (upload, person) in enumerate(zip(body.photos, persons)):
        try:
            result = gallery.enroll(
                collection, person, upload.data, face=face_pick(face), purpose=purpose, actor=key.id
            )
        except VisageError as exc:
            items.append(
                BulkItemOut(
                    item=number,
                    filename=upload.filename,
                    person=person,
                    problem=Problem(**problem_body(exc)),
                )
            )
            continue
        items.append(
            BulkItemOut(
                item=number,
                filename=upload.filename,
                person=person,
                result=EnrollOut.model_validate(result),
            )
        )
    return _summary(items, metrics)


def _enroll_embeddings(
    actor: str,
    collection: str,
    body: BulkIn,
    gallery: GalleryDep,
    metrics: MetricsDep,
    purpose: str | None,
) -> BulkOut:
    items = [
        EmbeddingItem(i.person, np.asarray(i.embedding, np.float32), i.quality) for i in body.items
    ]
    results = gallery.enroll_many(collection, items, purpose=purpose, actor=actor)
    return _summary(
        [
            BulkItemOut(item=n, person=i.person, result=EnrollOut.model_validate(r))
            for n, (i, r) in enumerate(zip(body.items, results))
        ],
        metrics,
    )


def _summary(items: list[BulkItemOut], metrics: MetricsDep) -> BulkOut:
    done = [i.result for i in items if i.result is not None]
    metrics.faces.labels("enroll").inc(len(done))
    return BulkOut(
        enrolled=sum(r.created for r in done),
        duplicates=sum(not r.created for r in done),
        failed=len(items) - len(done),
        items=items,
    )
