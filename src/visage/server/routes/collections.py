"""``/v1/collections``: list the collections a key may use, create and delete (admin), read."""

from __future__ import annotations

from fastapi import APIRouter

from ...errors import ModelError
from ...gallery import Gallery
from ..auth import ensure_sees
from ..deps import (
    AdminKey,
    AnyKey,
    CollectionKey,
    CollectionPath,
    GalleryDep,
    JsonOnly,
    Purpose,
)
from ..problems import problem_responses
from ..schemas import (
    CollectionCreate,
    CollectionList,
    CollectionOut,
    OperatingPointOut,
    RemovedOut,
)


def _with_threshold(gallery: Gallery, info: object) -> CollectionOut:
    """A collection as answered: its record and the identify threshold it uses now (none for
    a model this server has no calibration for: listing must not fail on one such collection;
    searching it answers 503 as before)."""
    out = CollectionOut.model_validate(info)
    try:
        point = gallery.collection_threshold(out.name)
    except ModelError:
        return out
    return out.model_copy(update={"operating_point": OperatingPointOut.model_validate(point)})


router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=problem_responses())


@router.get("", response_model=CollectionList)
def list_collections(key: AnyKey, gallery: GalleryDep) -> CollectionList:
    """The collections this key may use, by name, with their sizes."""
    return CollectionList(
        items=[_with_threshold(gallery, c) for c in gallery.collections() if key.sees(c.name)]
    )


@router.post("", status_code=201, response_model=CollectionOut, dependencies=[JsonOnly])
def create_collection(key: AdminKey, body: CollectionCreate, gallery: GalleryDep) -> CollectionOut:
    """A new, empty collection for the server's embedding model (409 if the name is taken)."""
    ensure_sees(key, body.name)
    return CollectionOut.model_validate(
        gallery.create_collection(
            body.name, keep_images=body.keep_images, target_fpir=body.target_fpir, actor=key.id
        )
    )


@router.get("/{collection}", response_model=CollectionOut)
def get_collection(
    key: CollectionKey, collection: CollectionPath, gallery: GalleryDep
) -> CollectionOut:
    """One collection with its model, how many persons and templates it holds, and the
    identify threshold it uses now with its provenance."""
    return _with_threshold(gallery, gallery.collection(collection))


@router.delete("/{collection}", response_model=RemovedOut)
def delete_collection(
    key: AdminKey, collection: CollectionPath, gallery: GalleryDep, purpose: Purpose = None
) -> RemovedOut:
    """Delete a collection with every person, consent record and template, at once."""
    removed = gallery.delete_collection(collection, purpose=purpose, actor=key.id)
    return RemovedOut(templates_removed=removed)
