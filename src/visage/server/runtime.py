"""The face pipeline as the server shares it between request threads.

dlib's detector and network keep state while they run and are not safe to call from two
threads at once, so one call runs at a time (the ONNX runtime already spreads one call over
this process's share of the cores, :func:`~visage.pipeline.threads_per_worker`, so a second
concurrent call would only compete for them). The per-photo face limit
is enforced right after detection, before landmarks and embeddings, so a crowd photo costs
one detection and a 422, not a hundred embeddings.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import TooManyFaces
from ..models.base import Detection, Detector, Image
from ..pipeline import Face, Pipeline


class _LimitedDetector:
    """A detector that refuses a photo holding more than ``limit`` faces; it passes on
    ``tiled``, so the pipeline gives BlazeFace large photos whole, as it does outside the
    server, rather than shrunk to :data:`~visage.pipeline.DETECT_MAX_SIDE`."""

    def __init__(self, inner: Detector, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.name = inner.name
        self.tiled: bool = getattr(inner, "tiled", False)

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        found = self.inner.detect(image, upsample=upsample)
        if len(found) > self.limit:
            raise TooManyFaces(len(found), self.limit)
        return found

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        return [self.detect(image, upsample=upsample) for image in images]


class ServicePipeline(Pipeline):
    """A :class:`Pipeline` whose model steps (detection; landmarks, chips and quality; the
    embedding) run one at a time, on ``max_faces``: every entry point (``detect``, ``embed``,
    ``embed_boxes``, an evaluation's ``prepare``/``finish``) goes through these three, and
    decoding stays outside the lock."""

    def __init__(
        self,
        *,
        detector: str,
        runtime: str,
        upsample: int,
        max_pixels: int,
        max_faces: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            detector=detector, runtime=runtime, upsample=upsample, max_pixels=max_pixels,
            threads=threads,
        )  # fmt: skip
        self.detector = _LimitedDetector(self.detector, max_faces)
        self._lock = threading.Lock()

    def _detections(self, image: Image) -> list[Detection]:
        with self._lock:
            return super()._detections(image)

    def _measure(self, image: Image, detections: Sequence[Detection]) -> tuple[list[Face], Image]:
        with self._lock:
            return super()._measure(image, detections)

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        with self._lock:
            return super().embed_chips(chips)

    def warm(self) -> None:
        """Load every model now (readiness means the first request pays no loading time)."""
        blank = np.zeros((80, 80, 3), np.uint8)
        with self._lock:
            self.detector.detect(blank, upsample=0)
            self.landmarker.landmarks(blank, [(10, 10, 70, 70)])
        self.embed_chips(np.zeros((1, 150, 150, 3), np.uint8))
