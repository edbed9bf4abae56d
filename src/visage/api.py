"""The flat, verb-named public API: ``visage.detect``, ``visage.embed``, ``visage.compare``.

Each call reuses one :class:`~visage.pipeline.Pipeline` per configuration, so models load once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .decision import Calibration, Comparison, decide, default_calibration, distance, normalize
from .grouping import Grouping, edge_threshold
from .grouping import group as _group
from .imageio import Source, load_image
from .models.base import Image, embedding_dim
from .pipeline import Face, FacePick, Pipeline, pick_face

__all__ = ["compare", "detect", "embed", "face_in", "group", "load_image", "pipeline"]

FaceLike = Face | npt.ArrayLike | Source


@lru_cache(maxsize=8)
def pipeline(detector: str = "hog", upsample: int = 1, tta: bool = False) -> Pipeline:
    """The shared pipeline for a configuration (built on first use)."""
    return Pipeline(detector=detector, upsample=upsample, tta=tta)


def _image(image: Image | Source) -> Image:
    return image if isinstance(image, np.ndarray) else load_image(image)


def detect(image: Image | Source, *, detector: str = "hog", upsample: int = 1) -> list[Face]:
    """Faces in an image (array, path or bytes): boxes, landmarks, quality; largest first."""
    return pipeline(detector, upsample).detect(_image(image))


def embed(
    image: Image | Source, *, detector: str = "hog", upsample: int = 1, tta: bool = False
) -> list[Face]:
    """Faces with 128-d L2-normalised embeddings, largest first."""
    return pipeline(detector, upsample, tta).embed(_image(image))


def face_in(image: Image | Source, face: FacePick = None, *, name: str | None = None) -> Face:
    """The embedded face of a photo that ``face`` picks (see :data:`~visage.pipeline.FacePick`):
    a photo with several faces is refused (:class:`~visage.errors.AmbiguousFace`) without one."""
    pixels = _image(image)
    where = name or (str(image) if isinstance(image, (str, Path)) else "the image")
    return pick_face(embed(pixels), face, pixels.shape[1], pixels.shape[0], where)


def _vector(x: FaceLike, face: FacePick) -> tuple[npt.NDArray[np.float32], str]:
    if isinstance(x, Face):
        if x.embedding is None or x.model_id is None:
            raise ValueError("this Face has no embedding: get it from visage.embed()")
        return x.embedding, x.model_id
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return normalize(x), pipeline().model_id
    found = face_in(x, face)  # type: ignore[arg-type]
    return found.embedding, found.model_id  # type: ignore[return-value]


def compare(
    a: FaceLike,
    b: FaceLike,
    *,
    face: FacePick = None,
    other_face: FacePick = None,
    calibration: Calibration | None = None,
) -> Comparison:
    """Is this the same person? Distance, decision, and the threshold used with its provenance.

    ``a``/``b`` may be Faces, embeddings, images, paths or bytes; a photo with several faces is
    refused unless ``face`` (for ``a``) / ``other_face`` (for ``b``) picks one, as everywhere.
    The threshold comes from ``calibration`` or the record shipped for the embedding model.
    """
    va, model_a = _vector(a, face)
    vb, model_b = _vector(b, other_face)
    if model_a != model_b:
        raise ValueError(f"cannot compare embeddings of different models: {model_a} vs {model_b}")
    cal = calibration or default_calibration(model_a)
    return decide(distance(va, vb), cal)


def embeddings(faces: Sequence[Face], model_id: str) -> npt.NDArray[np.float32]:
    """The faces' embeddings as rows ``(n, d)``; ``(0, d)`` of ``model_id``'s size for none.
    :class:`ValueError` for a Face without its embedding."""
    rows = [f.embedding for f in faces]
    if any(r is None for r in rows):
        raise ValueError("every Face needs its embedding: get them from visage.embed()")
    if not rows:
        return np.empty((0, embedding_dim(model_id) or 128), np.float32)
    return np.stack([r for r in rows if r is not None]).astype(np.float32)


def group(
    faces: Sequence[Face] | npt.NDArray[np.float32], *, threshold: float | None = None
) -> Grouping:
    """Faces (with embeddings, e.g. from :func:`embed`) or embeddings ``(n, d)`` grouped by
    person: row indices per group, and ``messy`` for faces like no other. Without
    ``threshold`` the edge threshold follows the number of faces
    (:func:`visage.grouping.edge_threshold`), so precision holds as the set grows. Nothing is
    stored."""
    if isinstance(faces, np.ndarray):
        vectors, model_id = np.asarray(faces, dtype=np.float32), pipeline().model_id
    else:
        model_id = next((f.model_id for f in faces if f.model_id), pipeline().model_id)
        vectors = embeddings(faces, model_id)
    if vectors.ndim != 2:
        raise ValueError(f"group needs (n, d) embeddings, not shape {vectors.shape}")
    cut = threshold if threshold is not None else edge_threshold(len(vectors), model_id).threshold
    return _group(vectors, cut)
