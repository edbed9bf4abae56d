"""Request bodies that carry photos: a raw image, multipart form fields, or JSON embeddings.

A route that takes a photo accepts it as the whole body (``Content-Type: image/jpeg``, any
``image/*`` or ``application/octet-stream``) or as a ``multipart/form-data`` file field; routes
that take probes accept JSON embeddings too. Anything else is a 415 naming what is accepted;
a JSON body that does not validate is a 422 like any other. The OpenAPI request bodies are
declared here beside the code that reads them, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from ..errors import InputError
from .problems import UnsupportedMediaType
from .schemas import BulkIn, EmbeddingIn, EmbeddingsIn

RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
"""Raw photo content types listed in the OpenAPI document; every ``image/*`` is read."""
MULTIPART = "multipart/form-data"
JSON = "application/json"

MAX_FORM_FIELD_BYTES = 64 * 1024
"""Largest non-file multipart field (a person id, say)."""

Model = TypeVar("Model", bound=BaseModel)

COMPONENT_SCHEMAS: dict[str, Any] = {}
"""Schemas the request bodies below refer to, added to the OpenAPI components by the app."""


@dataclass(frozen=True)
class Upload:
    """One photo as sent: its bytes and, from a multipart field, its file name."""

    data: bytes
    filename: str | None = None


def media_type(request: Request) -> str:
    """The request's media type, lower-cased, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_raw(media: str) -> bool:
    return media.startswith("image/") or media == "application/octet-stream"


def _accepted(raw: bool, multipart: bool, json: bool) -> list[str]:
    return [
        *(["image/*", "application/octet-stream"] if raw else []),
        *([MULTIPART] if multipart else []),
        *([JSON] if json else []),
    ]


async def _json(request: Request, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


async def _form(
    request: Request, max_files: int
) -> tuple[dict[str, list[str]], dict[str, list[Upload]]]:
    """The text fields and the files of a multipart body, by field name, read into memory."""
    texts: dict[str, list[str]] = {}
    files: dict[str, list[Upload]] = {}
    async with request.form(
        max_files=max_files, max_fields=max_files + 100, max_part_size=MAX_FORM_FIELD_BYTES
    ) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(name, []).append(Upload(await value.read(), value.filename))
            else:
                texts.setdefault(name, []).append(value)
    return texts, files


def _one(
    files: dict[str, list[Upload]],
    field: str,
    *,
    required: bool = True,
    what: str = "a photo file",
) -> Upload | None:
    found = files.get(field, [])
    if len(found) > 1:
        raise InputError(f"send one file in the multipart field {field!r}, not {len(found)}")
    if not found and required:
        raise InputError(f"the multipart field {field!r} ({what}) is required")
    return found[0] if found else None


async def photo(request: Request) -> Upload:
    """One photo: the raw body, or the multipart file field ``photo``."""
    media = media_type(request)
    if _is_raw(media):
        return Upload(await request.body())
    if media == MULTIPART:
        _, files = await _form(request, 1)
        found = _one(files, "photo")
        assert found is not None, "_one returns a file when it is required"
        return found
    raise UnsupportedMediaType(media, _accepted(True, True, False))


async def photo_pair(request: Request) -> tuple[Upload, Upload | None]:
    """A photo and, from multipart, an optional second one (field ``other_photo``)."""
    media = media_type(request)
    if _is_raw(media):
        return Upload(await request.body()), None
    if media == MULTIPART:
        _, files = await _form(request, 2)
        first = _one(files, "photo")
        assert first is not None, "_one returns a file when it is required"
        return first, _one(files, "other_photo", required=False)
    raise UnsupportedMediaType(media, _accepted(True, True, False))


async def probes(request: Request) -> Upload | EmbeddingsIn:
    """A photo (raw or multipart ``photo``) or JSON ``{"embeddings": [[...], ...]}``."""
    return await _photo_or_json(request, EmbeddingsIn)


async def template(request: Request) -> Upload | EmbeddingIn:
    """A photo to enroll (raw or multipart ``photo``) or JSON ``{"embedding": [...]}``."""
    return await _photo_or_json(request, EmbeddingIn)


async def _photo_or_json(request: Request, model: type[Model]) -> Upload | Model:
    if media_type(request) == JSON:
        return await _json(request, model)
    try:
        return await photo(request)
    except UnsupportedMediaType as exc:
        raise UnsupportedMediaType(exc.given, _accepted(True, True, True)) from None


@dataclass(frozen=True)
class PhotoBatch:
    """Photos from a multipart body (field ``photos``, repeated) and the ``person`` fields."""

    photos: list[Upload]
    persons: list[str]


async def photo_batch(request: Request) -> PhotoBatch | EmbeddingsIn:
    """Many photos (multipart ``photos``) or JSON ``{"embeddings": [...]}`` — for grouping."""
    return await _batch(request, EmbeddingsIn)


async def enrollment_batch(request: Request) -> PhotoBatch | BulkIn:
    """Many photos with ``person`` fields (multipart) or JSON ``{"items": [...]}``."""
    return await _batch(request, BulkIn)


async def _batch(request: Request, model: type[Model]) -> PhotoBatch | Model:
    media = media_type(request)
    if media == JSON:
        return await _json(request, model)
    if media == MULTIPART:
        limit = request.app.state.services.settings.max_batch
        texts, files = await _form(request, limit)
        return PhotoBatch(files.get("photos", []), texts.get("person", []))
    raise UnsupportedMediaType(media, _accepted(False, True, True))


@dataclass(frozen=True)
class EvalUpload:
    """A verification's two files: the pairs protocol and a zip of the photos it names."""

    pairs: Upload
    photos: Upload


@dataclass(frozen=True)
class IdentifyUpload:
    """An identification's three files: the gallery and probe lists (``person path`` lines)
    and a zip of the photos they name."""

    gallery: Upload
    probes: Upload
    photos: Upload


async def _eval_files(request: Request, fields: dict[str, str], whole: str) -> list[Upload]:
    """The multipart file ``fields`` (name: what it holds, for the message), each required and
    none empty (``whole`` names them all); nothing else is accepted."""
    media = media_type(request)
    if media != MULTIPART:
        raise UnsupportedMediaType(media, [MULTIPART])
    _, files = await _form(request, len(fields))
    found = [_one(files, name, what=what) for name, what in fields.items()]
    uploads = [f for f in found if f is not None]
    assert len(uploads) == len(fields), "_one returns a file when it is required"
    if not all(f.data for f in uploads):
        raise InputError(f"{whole} must not be empty")
    return uploads


async def eval_upload(request: Request) -> EvalUpload:
    """The multipart file fields ``pairs`` and ``photos``."""
    pairs, photos = await _eval_files(
        request,
        {"pairs": "the pairs file: LFW pairs or a CSV 'a,b,same'",
         "photos": "a zip of the photos the pairs name"},
        "the pairs file and the photos archive",
    )  # fmt: skip
    return EvalUpload(pairs, photos)


async def identify_upload(request: Request) -> IdentifyUpload:
    """The multipart file fields ``gallery``, ``probes`` and ``photos``."""
    gallery, probes, photos = await _eval_files(
        request,
        {"gallery": "the gallery list: 'person path' lines",
         "probes": "the probe list: 'person path' lines",
         "photos": "a zip of the photos the lists name"},
        "the gallery list, the probe list and the photos archive",
    )  # fmt: skip
    return IdentifyUpload(gallery, probes, photos)


# ---------------------------------------------------------------- OpenAPI request bodies


def _binary() -> dict[str, Any]:
    return {"type": "string", "format": "binary"}


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENT_SCHEMAS.update(schema.pop("$defs", {}))
    COMPONENT_SCHEMAS[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def request_body(
    *,
    raw: bool = False,
    multipart: dict[str, Any] | None = None,
    required_fields: Sequence[str] = (),
    json: type[BaseModel] | None = None,
    description: str,
) -> dict[str, Any]:
    """``openapi_extra`` declaring a route's body in each form it accepts."""
    content: dict[str, Any] = {}
    if raw:
        content.update({media: {"schema": _binary()} for media in RAW_TYPES})
    if multipart is not None:
        content[MULTIPART] = {
            "schema": {
                "type": "object",
                "properties": multipart,
                "required": list(required_fields),
            }
        }
    if json is not None:
        content[JSON] = {"schema": _schema_of(json)}
    return {"requestBody": {"required": True, "description": description, "content": content}}


PHOTO_BODY = request_body(
    raw=True,
    multipart={"photo": _binary()},
    required_fields=["photo"],
    description="A photo: the raw body (image/*) or the multipart file field `photo`.",
)
PAIR_BODY = request_body(
    raw=True,
    multipart={"photo": _binary(), "other_photo": _binary()},
    required_fields=["photo"],
    description="A photo, and either a second one (multipart `other_photo`) or the "
    "`collection` and `person` query parameters to compare against.",
)
PROBES_BODY = request_body(
    raw=True,
    multipart={"photo": _binary()},
    required_fields=["photo"],
    json=EmbeddingsIn,
    description="A photo (every face in it is a probe), or embeddings as JSON.",
)
TEMPLATE_BODY = request_body(
    raw=True,
    multipart={"photo": _binary()},
    required_fields=["photo"],
    json=EmbeddingIn,
    description="A photo of the person (one face, or pick one with `face`), or an embedding.",
)
GROUP_BODY = request_body(
    multipart={"photos": {"type": "array", "items": _binary()}},
    required_fields=["photos"],
    json=EmbeddingsIn,
    description="Photos (the multipart field `photos`, repeated) or embeddings as JSON.",
)
BULK_BODY = request_body(
    multipart={
        "photos": {"type": "array", "items": _binary()},
        "person": {"type": "array", "items": {"type": "string"}},
    },
    required_fields=["photos", "person"],
    json=BulkIn,
    description="Photos with a `person` field each (or one for all), or embeddings as JSON "
    "items (enrolled in one transaction, all or none).",
)
EVAL_BODY = request_body(
    multipart={"pairs": _binary(), "photos": _binary()},
    required_fields=["pairs", "photos"],
    description="The pairs file (`pairs`: LFW View-2, or a CSV `a,b,same` when its name ends in "
    "`.csv`) and a zip of the photos it names (`photos`), paths relative to the zip's root.",
)
EVAL_IDENTIFY_BODY = request_body(
    multipart={"gallery": _binary(), "probes": _binary(), "photos": _binary()},
    required_fields=["gallery", "probes", "photos"],
    description="The gallery list (`gallery`) and the probe list (`probes`), `person path` "
    "lines as `visage eval identify` reads them (`#` starts a comment; probes of persons not "
    "in the gallery are non-mated searches), and a zip of the photos they name (`photos`), "
    "paths relative to the zip's root.",
)
