"""The onnx runtime: dlib's networks converted to ONNX (:mod:`.onnx_convert`) run by onnxruntime.

- :class:`OnnxEmbedder` implements ``Embedder``: descriptors equal dlib's within 1e-6 (fp32;
  4.3e-7 max over 444 faces), 8 ms per face at batch 32 against dlib's ~130 ms on the 2-core
  AVX-512 development machine (``docs/performance-runtime.md``). ``quantized=True`` gives an
  INT8 model (onnxruntime static quantization calibrated on the caller's chips, checked against
  fp32 on this CPU, :mod:`.int8`): ~2x fp32's speed, pairs accuracy within 0.3 points, and its
  own ``model_id`` because descriptors move by ~0.03 (normalised L2).
- :class:`OnnxMmodDetector` implements ``Detector`` with dlib's MMOD CNN: the image pyramid,
  score threshold and non-max suppression are numpy code replicating dlib's arithmetic around the
  converted convolution graph, so boxes equal ``cnn_face_detection_model_v1``'s (~8x faster).

Sessions are created on first use, never at import, with every graph optimisation, intra-op
threads = CPU cores (``threads`` overrides: give each process-pool worker its share), and the
CUDA provider when onnxruntime has it. Instances pickle without their session (they reopen the
model by path), so a process pool can use them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from .base import Box, Detection, Image, clip_box
from .int8 import MAX_DRIFT, Int8Check, checked_int8_model
from .onnx_convert import converted_model_path
from .sessions import make_session

EMBEDDER_ID = "dlib_resnet_v1"
EMBEDDER_INT8_ID = "dlib_resnet_v1_int8"
CHIP_SIZE = 150

FloatArray = npt.NDArray[np.float32]


class _SessionHolder:
    """A session opened on first use on the file ``_model_file()`` names; pickles without it."""

    threads: int | None
    _session: Any = None

    def _model_file(self) -> Path:
        raise NotImplementedError

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(self._model_file(), threads=self.threads)
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        self._model_file()  # resolve (convert or quantize) once, in the parent
        state = dict(self.__dict__)
        state.pop("_session", None)
        return state


class OnnxEmbedder(_SessionHolder):
    """dlib's ResNet embedder on onnxruntime: ``(n,150,150,3) uint8`` chips → ``(n,128) float32``.

    fp32 (the default) has dlib's ``model_id`` because its descriptors are dlib's (max abs
    difference ~4e-7 on the test photos): galleries built by either runtime stay valid.
    ``quantized=True`` needs ``calibration_chips`` (at least 8, better a few hundred aligned chips
    of the deployment's own photos): the INT8 model is built once, cached by those chips, and
    checked on this CPU (:mod:`.int8`); it gets its own ``model_id`` so INT8 templates are never
    mixed with fp32 ones. Where its held-out drift exceeds ``max_drift`` the embedder runs fp32
    instead, with fp32's ``model_id``, after one warning (``int8_check`` says why).

    ``batch_size`` bounds peak memory: larger inputs run in slices of that many chips (32 is
    past the point where bigger batches stop paying on 2 cores).
    """

    def __init__(
        self,
        *,
        quantized: bool = False,
        calibration_chips: npt.NDArray[np.uint8] | None = None,
        max_drift: float = MAX_DRIFT,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if quantized and calibration_chips is None:
            raise ValueError("quantized=True needs calibration_chips (n,150,150,3) uint8")
        if not quantized and calibration_chips is not None:
            raise ValueError("calibration_chips are only used with quantized=True")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.quantized = quantized
        self.max_drift = max_drift
        self.batch_size = batch_size
        self.threads = threads
        self._calibration = None if calibration_chips is None else _check_chips(calibration_chips)
        self._path: Path | None = None
        self._int8: Int8Check | None = None

    def _model_file(self) -> Path:
        if self._path is None:
            if self._calibration is not None:
                self._int8 = checked_int8_model(
                    self._calibration, max_drift=self.max_drift, threads=self.threads
                )
                self._calibration = None
            if self._int8 is not None and self._int8.in_use:
                self._path = converted_model_path("resnet").with_name(self._int8.model)
            else:
                self._path = converted_model_path("resnet")
        return self._path

    @property
    def int8_check(self) -> Int8Check | None:
        """The INT8 verdict on this CPU (building and checking the model on first use), or
        ``None`` for an fp32 embedder."""
        if self.quantized:
            self._model_file()
        return self._int8

    @property
    def model_id(self) -> str:
        """``dlib_resnet_v1_int8`` while the checked INT8 model runs, else dlib's own id."""
        check = self.int8_check
        return EMBEDDER_INT8_ID if check is not None and check.in_use else EMBEDDER_ID

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Raw 128-d descriptors (dlib's scale, not normalised) for aligned 150x150 RGB chips."""
        chips = _check_chips(chips)
        if len(chips) == 0:
            return np.empty((0, 128), np.float32)
        out = [
            self.session.run(None, {"chips": chips[i : i + self.batch_size].astype(np.float32)})[0]
            for i in range(0, len(chips), self.batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)


def _check_chips(chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
        raise ValueError(f"chips must be (n,150,150,3) uint8, not {chips.shape} {chips.dtype}")
    return chips


# ----------------------------------------------------------------------------------------------
# MMOD: dlib's pyramid, window mapping and non-max suppression, in numpy.
# Rectangles here are dlib's: (left, top, right, bottom) with right/bottom inclusive.


@dataclass(frozen=True)
class MmodParams:
    """What the detector needs around the conv graph, read from the converted model's metadata."""

    means: tuple[float, float, float]
    pyramid_n: int
    pyramid_padding: int
    pyramid_outer_padding: int
    windows: tuple[tuple[int, int], ...]
    min_size: int
    map_scale: float
    map_offset: float
    nms_iou: float
    nms_covered: float


def _lround(x: float) -> int:
    """C's ``lround``: halves away from zero (Python's ``round`` goes to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _rate_size(n: int, pyramid_n: int) -> int:
    return math.floor((pyramid_n - 1.0) / pyramid_n * n)


def pyramid_layout(
    nr: int, nc: int, pyramid_n: int, padding: int, outer_padding: int
) -> tuple[list[Box], int, int]:
    """dlib's tiled pyramid: where each level goes in one image, and that image's rows, cols.

    Level 0 (the image) runs down the left; smaller levels follow below it until they can double
    back up the right side, each ``padding`` apart, all ``outer_padding`` from the border.
    """
    sizes = [(nc, nr)]
    while True:
        nr, nc = _rate_size(nr, pyramid_n), _rate_size(nc, pyramid_n)
        if nr * nc == 0 or nr < 5:
            break
        sizes.append((nc, nr))
    width0, height0 = sizes[0]
    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    height = prev_width = 0
    for w, h in sizes:
        if w <= width0 - prev_width - padding and (height - height0) * 2 >= total_height - height0:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[Box] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        w, h = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    first = rects[0]
    while i < len(sizes):
        w, h = sizes[i]
        right, bottom = outer_padding + width0 - 1, y - 1
        rect = (right - (w - 1), bottom - (h - 1), right, bottom)
        if _intersects(first, rect):
            break
        rects.append(rect)
        y -= h + padding
        i += 1
    return rects, height + 2 * outer_padding, width0 + 2 * outer_padding


def _intersects(a: Box, b: Box) -> bool:
    return max(a[0], b[0]) <= min(a[2], b[2]) and max(a[1], b[1]) <= min(a[3], b[3])


def _bilinear_grid(
    in_n: int, out_n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], int]:
    """dlib's SIMD column sampling: left indices, float fractions, and how many columns it does.

    Positions advance in float32 four lanes at a time; the columns it leaves are done in double
    by the scalar tail, returned separately by :func:`_tail_columns`.
    """
    scale = (in_n - 1) / max(out_n - 1, 1)
    x0 = -4 * scale
    groups = out_n // 4 + 2
    lanes = np.empty((groups + 1, 4), np.float32)
    lanes[0] = np.array([x0 + j * scale for j in range(4)], dtype=np.float64).astype(np.float32)
    lanes[1:] = np.float32(4 * scale)
    xs = np.cumsum(lanes, axis=0, dtype=np.float32)[1:]  # sequential float32 adds, like SIMD
    left = xs.astype(np.int64)  # truncation, as _mm_cvttps_epi32
    stop = np.nonzero(left[:, 3] + 1 >= in_n)[0]
    done = int(stop[0]) * 4 if len(stop) else groups * 4
    done = min(done, out_n)
    frac = (xs - left.astype(np.float32)).astype(np.float32)
    return left.reshape(-1)[:done], frac.reshape(-1)[:done], done


def _row_grid(in_n: int, out_n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    scale = (in_n - 1) / max(out_n - 1, 1)
    steps = np.full(out_n + 1, scale, dtype=np.float64)
    steps[0] = -scale
    ys = np.cumsum(steps)[1:]  # sequential double adds, as dlib's loop
    top = np.floor(ys).astype(np.int64)
    return top, ys - top


def _resize_bilinear(
    src: FloatArray, out_rows: int, out_cols: int, *, to_uint8: bool
) -> FloatArray:
    """dlib's ``resize_image`` (bilinear, corners aligned) of ``(channels, rows, cols)`` planes.

    ``to_uint8`` reproduces the RGB version (results truncated to integers); otherwise the float
    version used inside the tiled pyramid.
    """
    channels, in_rows, in_cols = src.shape
    out = np.zeros((channels, out_rows, out_cols), np.float32)
    if out_rows == 0 or out_cols == 0 or in_rows == 0 or in_cols == 0:
        return out
    top, tb = _row_grid(in_rows, out_rows)
    bottom = np.minimum(top + 1, in_rows - 1)
    left, lr, done = _bilinear_grid(in_cols, out_cols)
    right = left + 1
    tb32 = tb.astype(np.float32)[:, None]
    inv_tb32 = (1 - tb).astype(np.float32)[:, None]
    inv_lr = (np.float32(1) - lr)[None, :]
    lr2 = lr[None, :]
    tlf, trf = inv_tb32 * inv_lr, inv_tb32 * lr2
    blf, brf = tb32 * inv_lr, tb32 * lr2
    for ch in range(channels):
        plane = src[ch]
        tl = plane[top[:, None], left[None, :]]
        tr = plane[top[:, None], right[None, :]]
        bl = plane[bottom[:, None], left[None, :]]
        br = plane[bottom[:, None], right[None, :]]
        v = tlf * tl + trf * tr + blf * bl + brf * br
        out[ch, :, :done] = np.trunc(v) if to_uint8 else v
    if done < out_cols:
        _tail_columns(src, out, top, bottom, tb, done, to_uint8=to_uint8)
    return out


def _tail_columns(
    src: FloatArray,
    out: FloatArray,
    top: npt.NDArray[np.int64],
    bottom: npt.NDArray[np.int64],
    tb: npt.NDArray[np.float64],
    start: int,
    *,
    to_uint8: bool,
) -> None:
    """The last few columns, which dlib computes in scalar double arithmetic."""
    in_cols, out_cols = src.shape[2], out.shape[2]
    scale = (in_cols - 1) / max(out_cols - 1, 1)
    x = -scale + start * scale
    for c in range(start, out_cols):
        x += scale
        left = math.floor(x)
        right = min(left + 1, in_cols - 1)
        if to_uint8:
            lr = x - left
            v = (1 - tb)[None, :] * ((1 - lr) * src[:, top, left] + lr * src[:, top, right]) + tb[
                None, :
            ] * ((1 - lr) * src[:, bottom, left] + lr * src[:, bottom, right])
            out[:, :, c] = np.trunc(v)
        else:
            lr32 = np.float32(x - left)
            one = np.float32(1)
            upper = (one - lr32) * src[:, top, left] + lr32 * src[:, top, right]
            lower = (one - lr32) * src[:, bottom, left] + lr32 * src[:, bottom, right]
            out[:, :, c] = ((1 - tb)[None, :] * upper + tb[None, :] * lower).astype(np.float32)


def pyramid_up(image: Image) -> Image:
    """dlib's ``pyramid_up`` with ``pyramid_down<2>``: the image doubled, as the detector's
    ``upsample`` does it (``2*rows+1`` by ``2*cols+2``, bilinear, truncated)."""
    rows, cols = image.shape[:2]
    out_rows = _lround((rows - 1 + 0.75) * 2) + 1
    out_cols = _lround((cols - 1 + 1.25) * 2) + 1
    planes = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    up = _resize_bilinear(planes, out_rows, out_cols, to_uint8=True)
    return np.ascontiguousarray(up.transpose(1, 2, 0)).astype(np.uint8)


def tiled_pyramid(image: Image, params: MmodParams) -> tuple[FloatArray, list[Box]]:
    """The detector's input tensor ``(3, rows, cols)`` and where each pyramid level lies in it.

    As dlib's ``input_rgb_image_pyramid``: level 0 is ``(pixel - mean) / 256``; each next
    level is the previous one shrunk by ``(n-1)/n`` with dlib's float bilinear resize.
    """
    rows, cols = image.shape[:2]
    rects, total_rows, total_cols = pyramid_layout(
        rows, cols, params.pyramid_n, params.pyramid_padding, params.pyramid_outer_padding
    )
    data = np.zeros((3, total_rows, total_cols), np.float32)
    means = np.array(params.means, np.float32)[:, None, None]
    left, top, right, bottom = rects[0]
    data[:, top : bottom + 1, left : right + 1] = (image.transpose(2, 0, 1) - means) / np.float32(
        256
    )
    for prev, rect in itertools.pairwise(rects):
        pl, pt, pr, pb = prev
        src = data[:, pt : pb + 1, pl : pr + 1]
        left, top, right, bottom = rect
        data[:, top : bottom + 1, left : right + 1] = _resize_bilinear(
            src, bottom - top + 1, right - left + 1, to_uint8=False
        )
    return data, rects


def _nearest_rect(rects: Sequence[Box], x: int, y: int) -> int:
    best, best_dist = 0, math.inf
    for i, (left, top, right, bottom) in enumerate(rects):
        if left <= x <= right and top <= y <= bottom:
            return i
        nx, ny = min(max(x, left), right), min(max(y, top), bottom)
        dist = math.hypot(nx - x, ny - y)
        if dist < best_dist:
            best, best_dist = i, dist
    return best


def _round_point(v: float) -> int:
    """dlib's double→long point conversion: ``floor(v + 0.5)``."""
    return math.floor(v + 0.5)


def _tensor_to_image(
    rect: tuple[float, float, float, float], rects: Sequence[Box], pyramid_n: int
) -> tuple[float, float, float, float]:
    """dlib's ``tiled_pyramid_to_image``: a window in the tiled tensor back to image pixels."""
    left, top, right, bottom = rect
    level = _nearest_rect(rects, _round_point((left + right) / 2), _round_point((top + bottom) / 2))
    ox, oy = rects[level][0], rects[level][1]
    ratio = pyramid_n / (pyramid_n - 1.0)
    pts = [left - ox, top - oy, right - ox, bottom - oy]
    for _ in range(level):
        pts = [p * ratio + 0.3 for p in pts]
    return pts[0], pts[1], pts[2], pts[3]


def _overlaps(a: Box, b: Box, iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap``: intersection over the *bounding box* of both, or cover."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return False
    inner = float(iw * ih)
    outer = (max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inner / outer > iou or inner / area_a > covered or inner / area_b > covered


def scores_to_rects(
    scores: FloatArray, rects: Sequence[Box], params: MmodParams, threshold: float = 0.0
) -> list[tuple[Box, float]]:
    """dlib's ``loss_mmod`` ``to_label``: windows scoring above ``threshold``, strongest first,
    mapped to image pixels and thinned by non-max suppression. ``scores``: ``(windows, r, c)``."""
    found: list[tuple[float, tuple[float, float, float, float]]] = []
    for k, (width, height) in enumerate(params.windows):
        rows, cols = np.nonzero(scores[k] > threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            px = c * params.map_scale + params.map_offset
            py = r * params.map_scale + params.map_offset
            hw, hh = (width - 1) / 2, (height - 1) / 2
            window = (px - hw, py - hh, px + hw, py + hh)
            found.append(
                (float(scores[k, r, c]), _tensor_to_image(window, rects, params.pyramid_n))
            )
    found.sort(key=lambda d: d[0], reverse=True)
    kept: list[tuple[Box, float]] = []
    for score, (left, top, right, bottom) in found:
        box = (_lround(left), _lround(top), _lround(right), _lround(bottom))
        if any(_overlaps(k, box, params.nms_iou, params.nms_covered) for k, _ in kept):
            continue
        kept.append((box, score))
    return kept


def _rect_down(box: Box, levels: int) -> Box:
    """``pyramid_down<2>::rect_down``: a rectangle on the upsampled image back to the original."""
    x1, y1, x2, y2 = (float(v) for v in box)
    for _ in range(levels):
        x1, y1, x2, y2 = x1 / 2 - 1.25, y1 / 2 - 0.75, x2 / 2 - 1.25, y2 / 2 - 0.75
    return (_lround(x1), _lround(y1), _lround(x2), _lround(y2))


def _mmod_params(session: Any) -> MmodParams:
    meta = session.get_modelmeta().custom_metadata_map
    try:
        m = json.loads(meta["visage.mmod"])
        return MmodParams(
            means=tuple(m["means"]),
            pyramid_n=int(m["pyramid_n"]),
            pyramid_padding=int(m["pyramid_padding"]),
            pyramid_outer_padding=int(m["pyramid_outer_padding"]),
            windows=tuple((int(w), int(h)) for w, h in m["windows"]),
            min_size=int(m["min_size"]),
            map_scale=float(m["map_scale"]),
            map_offset=float(m["map_offset"]),
            nms_iou=float(m["nms_iou"]),
            nms_covered=float(m["nms_covered"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the converted MMOD model has no usable metadata: {exc}") from exc


class OnnxMmodDetector(_SessionHolder):
    """dlib's MMOD CNN face detector on onnxruntime; boxes match ``cnn_face_detection_model_v1``.

    Scores are the CNN's (roughly 0..1.2, threshold 0). Each photo costs one pass over its tiled
    pyramid; ``upsample`` doubles the photo first (finds faces down to ~40 px, 4x the work).
    """

    name = "cnn"

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads
        self._params: MmodParams | None = None

    def _model_file(self) -> Path:
        return converted_model_path("mmod")

    @property
    def params(self) -> MmodParams:
        if self._params is None:
            self._params = _mmod_params(self.session)
        return self._params

    def _scores(self, tensors: list[FloatArray]) -> list[FloatArray]:
        """Score maps ``(windows, r, c)``; empty for a pyramid too small for the network (where
        dlib raises), so a tiny image simply has no faces."""
        params = self.params
        empty = np.zeros((len(params.windows), 0, 0), np.float32)
        fits = [min(t.shape[1:]) >= params.min_size for t in tensors]
        if all(fits) and len({t.shape for t in tensors}) == 1:
            return list(self.session.run(None, {"pyramid": np.stack(tensors)})[0])
        return [
            self.session.run(None, {"pyramid": t[None]})[0][0] if ok else empty
            for t, ok in zip(tensors, fits)
        ]

    def detect(self, image: Image, *, upsample: int = 1) -> list[Detection]:
        return self.detect_many([image], upsample=upsample)[0]

    def detect_many(self, images: list[Image], *, upsample: int = 1) -> list[list[Detection]]:
        """Detections per image; images of one size run as one batch on the network."""
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, not {upsample}")
        if not images:
            return []
        prepared = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be (h,w,3) uint8, not {image.shape} {image.dtype}")
            big = image
            for _ in range(upsample):
                big = pyramid_up(big)
            prepared.append(tiled_pyramid(big, self.params))
        all_scores = self._scores([tensor for tensor, _ in prepared])
        out = []
        for image, (_, rects), scores in zip(images, prepared, all_scores):
            found = scores_to_rects(scores, rects, self.params)
            dets = []
            for box, score in found:
                rect = _rect_down(box, upsample) if upsample else box
                dets.append(Detection(box=clip_box(rect, image.shape), score=score, rect=rect))
            out.append(dets)
        return out
