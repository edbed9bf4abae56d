"""``POST /v1/group``: cluster the faces of many photos (or embeddings) into one group per
person, plus a "messy" group of faces that match no other."""

from __future__ import annotations

from fastapi import APIRouter

from ...grouping import edge_threshold, expected_precision, group
from ..bodies import GROUP_BODY
from ..deps import (
    EventsDep,
    GroupBody,
    IdentifyKey,
    MetricsDep,
    PipelineDep,
    RequiredPurpose,
    SettingsDep,
)
from ..probes import FaceTag, read_batch
from ..problems import Problem, problem_body, problem_responses
from ..schemas import BoxOut, GroupExpected, GroupMember, GroupOut, ItemProblem

router = APIRouter(prefix="/v1", tags=["decisions"], responses=problem_responses())


def _member(tag: FaceTag) -> GroupMember:
    item, face, box, filename = tag
    shown = None if box is None else BoxOut.of(box)
    return GroupMember(item=item, face=face, box=shown, filename=filename)


@router.post("/group", response_model=GroupOut, openapi_extra=GROUP_BODY)
def group_faces(
    key: IdentifyKey,
    body: GroupBody,
    pipeline: PipelineDep,
    events: EventsDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    purpose: RequiredPurpose,
) -> GroupOut:
    """Every face of every photo, grouped by person by :func:`visage.grouping.group` (Chinese
    whispers over edges at a threshold that follows the number of faces, hub-corrected). Each
    face names its photo (``item``, its index in the request, and ``filename``), its face number
    and box. ``messy`` lists the faces that fell in no group
    of two or more: nobody else in the batch is within the threshold of them. A photo that
    cannot be read is listed in ``failed``; the rest are grouped. ``expected``: the BCubed
    precision to expect of this grouping (:func:`visage.grouping.expected_precision`)."""
    batch = read_batch(body, pipeline, max_batch=settings.max_batch)
    metrics.faces.labels("group").inc(len(batch.tags))
    point = edge_threshold(len(batch.tags), pipeline.model_id)
    found = group(batch.vectors, point.threshold)
    expected = expected_precision(found, point.threshold, pipeline.model_id)
    seq = events.record(
        "group",
        actor=key.id,
        purpose=purpose,
        input_hash=batch.sha256,
        items=batch.items,
        faces=len(batch.tags),
        groups=len(found.groups),
        messy=len(found.messy),
        failed=len(batch.failed),
    )
    return GroupOut(
        threshold=point.threshold,
        threshold_source=f"edge {point.describe()}",
        faces=len(batch.tags),
        expected=None if expected is None else GroupExpected(**expected.document()),
        groups=[[_member(batch.tags[i]) for i in g] for g in found.groups],
        messy=[_member(batch.tags[i]) for i in found.messy],
        failed=[
            ItemProblem(item=i, filename=name, problem=Problem(**problem_body(exc)))
            for i, name, exc in batch.failed
        ],
        audit_seq=seq,
    )
