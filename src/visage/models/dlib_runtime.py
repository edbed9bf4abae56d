"""The dlib runtime: HOG and MMOD detectors, 5/68-point landmarks, the ResNet embedder.

Each class loads its model on first use (never at import) and drops it when pickled, so
instances can be handed to worker processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Box, Detection, Image, clip_box
from .weights import model_path


def _import_dlib() -> Any:
    from ..errors import ModelError

    try:
        import dlib
    except ImportError:
        raise ModelError("dlib is not installed: pip install dlib-bin") from None
    return dlib


class _Lazy:
    """Holds one lazily-built dlib object; pickles without it."""

    _obj: Any = None

    def _build(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        if self._obj is None:
            self._obj = self._build()
        return self._obj

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_obj", None)
        return state


def _as_box(rect: Any) -> Box:
    return (int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))


class HogDetector(_Lazy):
    """dlib's HOG + linear SVM frontal detector: ~20 ms per 250x250 photo, frontal faces only.

    Scores are the SVM margin (0 is dlib's default threshold; ~1 and above is confident).
    """

    name = "hog"

    def _build(self) -> Any:
        return _import_dlib().get_frontal_face_detector()

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        rects, scores, _ = self.model.run(image, upsample, 0.0)
        return [
            Detection(box=clip_box(_as_box(r), image.shape), score=float(s), rect=_as_box(r))
            for r, s in zip(rects, scores)
        ]

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        return [self.detect(img, upsample=upsample) for img in images]


class MmodDetector(_Lazy):
    """dlib's MMOD CNN detector: finds more faces (profiles, small ones), ~2 s per photo on CPU.

    Scores are the CNN's confidence (roughly 0..1.2).
    """

    name = "cnn"

    def _build(self) -> Any:
        return _import_dlib().cnn_face_detection_model_v1(str(model_path("mmod")))

    @staticmethod
    def _to_detections(found: Any, shape: tuple[int, ...]) -> list[Detection]:
        return [
            Detection(box=clip_box(_as_box(d.rect), shape), score=float(d.confidence), rect=_as_box(d.rect))
            for d in found
        ]

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        return self._to_detections(self.model(image, upsample), image.shape)

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        """Batched on the network when all images share one size (dlib's requirement)."""
        if len({img.shape for img in images}) == 1 and images:
            found = self.model(images, upsample, batch_size=len(images))
            return [self._to_detections(f, img.shape) for f, img in zip(found, images)]
        return [self.detect(img, upsample=upsample) for img in images]


class DlibLandmarker(_Lazy):
    """dlib's shape predictors: 5 points (what alignment needs) or the 68-point iBUG layout."""

    def __init__(self, points: int = 5) -> None:
        if points not in (5, 68):
            raise ValueError(f"landmark models have 5 or 68 points, not {points}")
        self.points = points

    def _build(self) -> Any:
        name = "landmarks5" if self.points == 5 else "landmarks68"
        return _import_dlib().shape_predictor(str(model_path(name)))

    def raw(self, image: Image, rect: Box) -> Any:
        """dlib's ``full_object_detection`` for one rectangle (for callers that need dlib types)."""
        dlib = _import_dlib()
        return self.model(image, dlib.rectangle(*rect))

    def landmarks(self, image: Image, boxes: list[Box]) -> list[npt.NDArray[np.float32]]:
        out = []
        for rect in boxes:
            shape = self.raw(image, rect)
            out.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32))
        return out


class DlibEmbedder(_Lazy):
    """dlib's ResNet-29 embedder (99.38% on LFW): ~80 ms per face with dlib-bin on this CPU."""

    model_id = "dlib_resnet_v1"

    def _build(self) -> Any:
        return _import_dlib().face_recognition_model_v1(str(model_path("resnet")))

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if len(chips) == 0:
            return np.empty((0, 128), np.float32)
        batch = [np.ascontiguousarray(c) for c in chips]
        return np.asarray(self.model.compute_face_descriptor(batch), dtype=np.float32).reshape(-1, 128)
