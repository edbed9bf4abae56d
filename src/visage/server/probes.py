"""Faces from a request body: every face of a photo or of many photos, or the embeddings sent.

Identify and find-similar answer for each face in the photo (not only the largest), so the
photo is embedded here once and each face goes to the gallery as a :class:`~visage.pipeline.Face`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..decision import unit_embedding
from ..errors import InputError, TooManyFaces, VisageError
from ..gallery import Gallery
from ..imageio import source_hash
from ..models.base import Box
from ..pipeline import Face
from .bodies import PhotoBatch, Upload
from .runtime import ServicePipeline
from .schemas import EmbeddingsIn


@dataclass(frozen=True)
class Probe:
    """One face of the photo (``face``) or one embedding sent (``vector``), at ``index``;
    ``photo_sha256`` is the photo's, the audit's input_hash for each of its faces."""

    index: int
    face: Face | None = None
    vector: npt.NDArray[np.float32] | None = None
    photo_sha256: str | None = None

    @property
    def query(self) -> Face | npt.NDArray[np.float32]:
        """What the gallery is asked with."""
        if self.face is not None:
            return self.face
        assert self.vector is not None, "a probe holds a face or a vector"
        return self.vector


@dataclass(frozen=True)
class Probes:
    """The probes of one request and the sha256 of what was sent (for the audit log)."""

    items: list[Probe]
    sha256: str


@contextmanager
def face_limit_audited(
    gallery: Gallery, action: str, *, actor: str, collection: str | None, purpose: str | None
) -> Iterator[None]:
    """The server's per-photo face limit refuses a call before the gallery sees it; the
    gallery audits that refusal all the same (``<action>.refused``, its seq in the problem)."""
    try:
        yield
    except TooManyFaces as exc:
        gallery.record_refusal(action, collection, exc, purpose=purpose, actor=actor)
        raise


def read_probes(
    body: Upload | EmbeddingsIn, pipeline: ServicePipeline, *, max_faces: int
) -> Probes:
    """Embed every face of a photo (largest first), or take the embeddings as sent."""
    if isinstance(body, Upload):
        faces = pipeline.embed(pipeline.load(body.data))
        digest = source_hash(body.data)
        return Probes([Probe(i, face=f, photo_sha256=digest) for i, f in enumerate(faces)], digest)
    if len(body.embeddings) > max_faces:
        raise TooManyFaces(len(body.embeddings), max_faces)
    vectors = [np.asarray(e, dtype=np.float32) for e in body.embeddings]
    digest = hashlib.sha256(b"".join(v.astype("<f4").tobytes() for v in vectors)).hexdigest()
    return Probes([Probe(i, vector=v) for i, v in enumerate(vectors)], digest)


FaceTag = tuple[int, int, Box | None, str | None]
"""Where a face of a batch came from: item, face number, box, filename."""


@dataclass(frozen=True)
class FaceBatch:
    """The faces of many items (photos or embeddings), each tagged ``(item, face number, box,
    filename)`` (box and filename only for photos; the filename as the client sent it).

    ``vectors`` is ``(n, d) float32``, one row per face; ``failed`` lists the items that could
    not be read, with the error; ``sha256`` covers every item read, for the audit log.
    """

    tags: list[FaceTag]
    vectors: npt.NDArray[np.float32]
    failed: list[tuple[int, str | None, VisageError]]
    sha256: str
    items: int


def check_batch(count: int, max_batch: int) -> None:
    """Refuse a request of more than ``max_batch`` items (the ``max_batch`` setting)."""
    if count > max_batch:
        raise InputError(f"{count} items; at most {max_batch} per request")


def read_batch(
    body: PhotoBatch | EmbeddingsIn, pipeline: ServicePipeline, *, max_batch: int
) -> FaceBatch:
    """Every face of every photo (an unreadable photo is recorded and skipped), or the
    embeddings as sent (all of one length, finite and non-zero, or the request is refused)."""
    count = len(body.photos) if isinstance(body, PhotoBatch) else len(body.embeddings)
    if count == 0:
        raise InputError("send photos in the multipart field 'photos', or embeddings as JSON")
    check_batch(count, max_batch)
    tags: list[FaceTag] = []
    rows: list[npt.NDArray[np.float32]] = []
    failed: list[tuple[int, str | None, VisageError]] = []
    digest = hashlib.sha256()
    if isinstance(body, PhotoBatch):
        for item, upload in enumerate(body.photos):
            try:
                faces = pipeline.embed(pipeline.load(upload.data))
            except VisageError as exc:
                failed.append((item, upload.filename, exc))
                continue
            digest.update(source_hash(upload.data).encode())
            for number, face in enumerate(faces):
                assert face.embedding is not None, "Pipeline.embed returns embeddings"
                tags.append((item, number, face.box, upload.filename))
                rows.append(face.embedding)
    else:
        for item, values in enumerate(body.embeddings):
            try:
                vector = unit_embedding(values, len(body.embeddings[0]))
            except InputError as exc:
                raise InputError(f"embedding {item}: {exc} (all embeddings share one length)") from None
            digest.update(np.asarray(values, dtype="<f4").tobytes())
            tags.append((item, 0, None, None))
            rows.append(vector)
    width = rows[0].shape[0] if rows else 128
    vectors = np.stack(rows) if rows else np.empty((0, width), np.float32)
    return FaceBatch(tags, vectors, failed, digest.hexdigest(), count)
