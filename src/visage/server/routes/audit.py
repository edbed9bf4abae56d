"""``/v1/audit``: read the audit log and verify its hash chain (admin scope)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from ...store import MAX_INTEGER
from ..auth import ensure_sees
from ..deps import AdminKey, GalleryDep, Purpose
from ..problems import problem_responses
from ..schemas import AuditEventOut, AuditList, ChainOut, IsoTime

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses())


@router.get("", response_model=AuditList)
def list_audit_events(
    key: AdminKey,
    gallery: GalleryDep,
    collection: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=60)] = None,
    actor: Annotated[
        str | None, Query(min_length=1, max_length=300, description="The key id that acted")
    ] = None,
    since: Annotated[
        IsoTime | None,
        Query(description="Events at or after this time (ISO-8601 with a UTC offset)"),
    ] = None,
    until: Annotated[
        IsoTime | None,
        Query(description="Events before this time (ISO-8601 with a UTC offset)"),
    ] = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_INTEGER, description="Return events after this seq")
    ] = 0,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INTEGER, description="Return events before this seq")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Annotated[
        Literal["oldest", "newest"],
        Query(description="`newest`: the newest events first (page on with `before`)"),
    ] = "oldest",
    purpose: Purpose = None,
) -> AuditList:
    """Audit events between ``after`` and ``before`` (seqs) and from ``since`` to ``until``
    (times), of one collection, action or actor when named, oldest first or newest first; a key
    limited to some collections names one. The read is audited (``audit.read``, after the
    events it returns)."""
    ensure_sees(key, collection)
    events = gallery.audit_events(
        collection=collection,
        action=action,
        actor=actor,
        since=since,
        until=until,
        after=after,
        before=before,
        limit=limit,
        newest_first=order == "newest",
        reader=key.id,
        purpose=purpose,
    )
    return AuditList(items=[AuditEventOut.model_validate(e) for e in events])


@router.get("/verify", response_model=ChainOut)
def verify_audit(key: AdminKey, gallery: GalleryDep) -> ChainOut:
    """Walk the whole hash chain and name the first broken link (needs an all-collections key)."""
    ensure_sees(key, None)
    return ChainOut.from_report(gallery.verify_audit())
