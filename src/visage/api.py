"""The flat, verb-named public API: ``visage.detect``, ``visage.embed``, ``visage.compare``.

Each call reuses one :class:`~visage.pipeline.Pipeline` per configuration, so models load once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .decision import Calibration, Comparison, decide, default_calibration, distance, normalize
from .errors import NoFace
from .imageio import Source, load_image
from .models.base import Image
from .pipeline import Face, Pipeline

__all__ = ["compare", "detect", "embed", "load_image", "pipeline"]

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


def _vector(x: FaceLike) -> tuple[npt.NDArray[np.float32], str]:
    if isinstance(x, Face):
        if x.embedding is None or x.model_id is None:
            raise ValueError("this Face has no embedding: get it from visage.embed()")
        return x.embedding, x.model_id
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return normalize(x), pipeline().model_id
    faces = embed(x)  # type: ignore[arg-type]
    if not faces:
        where = x if isinstance(x, (str, Path)) else "the image"
        raise NoFace(f"no face found in {where}")
    return faces[0].embedding, faces[0].model_id  # type: ignore[return-value]


def compare(a: FaceLike, b: FaceLike, *, calibration: Calibration | None = None) -> Comparison:
    """Is this the same person? Distance, decision, and the threshold used with its provenance.

    ``a``/``b`` may be Faces, embeddings, images, paths or bytes (the largest face is used).
    The threshold comes from ``calibration`` or the record shipped for the embedding model.
    """
    va, model_a = _vector(a)
    vb, model_b = _vector(b)
    if model_a != model_b:
        raise ValueError(f"cannot compare embeddings of different models: {model_a} vs {model_b}")
    cal = calibration or default_calibration(model_a.split("+")[0])
    return decide(distance(va, vb), cal)
