"""The small contracts every runtime implements, so the pipeline never names a runtime.

Shapes: images are ``(h, w, 3) uint8`` RGB; boxes are ``(left, top, right, bottom)`` pixel
coordinates as dlib reports its rectangles; landmarks ``(n, 2) float32`` (x, y); chips ``(n, 150, 150, 3) uint8``;
descriptors ``(n, 128) float32`` on the network's own scale (not normalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]

EMBEDDING_DIMS = {"dlib_resnet_v1": 128}
"""The embedding size of each model family Visage ships weights for."""


def model_family(model_id: str) -> str:
    """The weights a model id names, without its variant (``dlib_resnet_v1+flip`` →
    ``dlib_resnet_v1``): embedding sizes belong to the family, and so do calibrations unless the
    variant ships its own (:func:`visage.decision.default_calibration`)."""
    return model_id.split("+")[0]


def embedding_dim(model_id: str) -> int | None:
    """The embedding size of ``model_id``'s family, ``None`` for a model Visage does not ship."""
    return EMBEDDING_DIMS.get(model_family(model_id))


def clip_box(rect: Box, shape: tuple[int, ...]) -> Box:
    """Clip ``(left, top, right, bottom)`` to an image of ``shape`` (h, w, ...)."""
    left, top, right, bottom = rect
    h, w = shape[:2]
    return (max(left, 0), max(top, 0), min(right, w), min(bottom, h))


@dataclass(frozen=True)
class Detection:
    """One face found by a detector.

    ``box`` is clipped to ``[0, width] x [0, height]``; ``rect`` is the detector's own rectangle,
    which may reach past the border and is what the landmarker uses (as dlib does).
    """

    box: Box
    score: float
    rect: Box | None = None

    @property
    def landmark_rect(self) -> Box:
        """The rectangle to place landmarks in: the unclipped one when known."""
        return self.rect if self.rect is not None else self.box


@runtime_checkable
class Detector(Protocol):
    """Finds faces. ``upsample`` doubles the image that many times to find smaller faces."""

    name: str

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]: ...

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]: ...


@runtime_checkable
class Landmarker(Protocol):
    """Places ``points`` landmarks (5 or 68) on each detected face."""

    points: int

    def landmarks(self, image: Image, boxes: list[Box]) -> list[npt.NDArray[np.float32]]: ...


@runtime_checkable
class Embedder(Protocol):
    """Turns aligned 150x150 chips into raw 128-d descriptors, batched; ``model_id`` names the
    weights (and precision) the descriptors come from."""

    @property
    def model_id(self) -> str: ...

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]: ...
