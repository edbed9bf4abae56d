"""``/v1/collections/{collection}/persons…``: persons and their consent records (enroll scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import CollectionPath, EnrollKey, GalleryDep, JsonOnly, PersonPath, Purpose
from ..problems import problem_responses
from ..schemas import (
    ConsentCreate,
    ConsentList,
    ConsentOut,
    PersonCreate,
    PersonList,
    PersonOut,
    PersonUpdate,
    RemovedOut,
    RevokeIn,
)

router = APIRouter(
    prefix="/v1/collections/{collection}/persons", tags=["persons"], responses=problem_responses()
)


@router.get("", response_model=PersonList)
def list_persons(
    key: EnrollKey,
    collection: CollectionPath,
    gallery: GalleryDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    purpose: Purpose = None,
    search: Annotated[
        str | None,
        Query(min_length=1, max_length=300, description="Display name or external id contains"),
    ] = None,
) -> PersonList:
    """One page of the collection's persons, in creation order, optionally only those whose
    name or external id contains ``search`` (audited: ``person.list``)."""
    persons = gallery.persons(
        collection, offset=offset, limit=limit, reader=key.id, purpose=purpose, search=search
    )
    return PersonList(
        items=[PersonOut.model_validate(p) for p in persons], offset=offset, limit=limit
    )


@router.post("", status_code=201, response_model=PersonOut, dependencies=[JsonOnly])
def create_person(
    key: EnrollKey, collection: CollectionPath, body: PersonCreate, gallery: GalleryDep
) -> PersonOut:
    """A new person, with no templates and no consent yet (409 if the external id is taken)."""
    return PersonOut.model_validate(
        gallery.add_person(
            collection,
            body.display_name,
            external_id=body.external_id,
            metadata=body.metadata,
            actor=key.id,
        )
    )


@router.get("/{person}", response_model=PersonOut)
def get_person(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> PersonOut:
    """A person by id or external id, with their template count and consent history (audited:
    ``person.read``)."""
    return PersonOut.model_validate(
        gallery.person(collection, person, reader=key.id, purpose=purpose)
    )


@router.patch("/{person}", response_model=PersonOut, dependencies=[JsonOnly])
def update_person(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    body: PersonUpdate,
    gallery: GalleryDep,
) -> PersonOut:
    """Change a person's display name, external id or metadata; what is left out stays."""
    changes = body.model_dump(exclude_unset=True)
    return PersonOut.model_validate(
        gallery.update_person(collection, person, actor=key.id, **changes)
    )


@router.delete("/{person}", response_model=RemovedOut)
def delete_person(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> RemovedOut:
    """Delete a person with every template and consent record, from store and index at once."""
    removed = gallery.delete_person(collection, person, purpose=purpose, actor=key.id)
    return RemovedOut(templates_removed=removed)


@router.get("/{person}/consents", response_model=ConsentList)
def list_consents(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    gallery: GalleryDep,
    purpose: Purpose = None,
) -> ConsentList:
    """The person's consent records, oldest first, each with its status now (audited:
    ``person.read``)."""
    info = gallery.person(collection, person, reader=key.id, purpose=purpose, part="consents")
    return ConsentList(items=[ConsentOut.model_validate(c) for c in info.consents])


@router.post(
    "/{person}/consents", status_code=201, response_model=ConsentOut, dependencies=[JsonOnly]
)
def grant_consent(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    body: ConsentCreate,
    gallery: GalleryDep,
) -> ConsentOut:
    """Record consent (or another lawful basis); enrollment needs a valid one."""
    return ConsentOut.model_validate(
        gallery.grant_consent(
            collection,
            person,
            basis=body.basis,
            granted_by=body.granted_by,
            purpose=body.purpose,
            granted_at=body.granted_at,
            expires_at=body.expires_at,
            actor=key.id,
        )
    )


@router.post("/{person}/consents/revoke", response_model=RemovedOut, dependencies=[JsonOnly])
def revoke_consent(
    key: EnrollKey,
    collection: CollectionPath,
    person: PersonPath,
    gallery: GalleryDep,
    body: RevokeIn | None = None,
) -> RemovedOut:
    """Revoke every open consent record and delete all the person's templates at once."""
    removed = gallery.revoke_consent(
        collection, person, reason=body.reason if body is not None else None, actor=key.id
    )
    return RemovedOut(templates_removed=removed)
