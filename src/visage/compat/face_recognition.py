"""The public API of the ``face_recognition`` package, on Visage's runtimes.

Switch by changing one import::

    from visage.compat import face_recognition

Same signatures, return types and conventions as face_recognition 1.3: boxes are
``(top, right, bottom, left)`` clipped to the image, encodings are raw dlib-scale 128-d float64
arrays (not L2-normalised), ``tolerance=0.6`` is the usual threshold (lower is stricter). These
distances are ~1.42x Visage's own (docs/pipeline.md, "Distances", maps one to the other).
Unlike the original, :func:`load_image_file` decodes as :func:`visage.load_image` does: bad
files raise :class:`visage.errors.InvalidImage` with the file name, truncated ones too (also
after ``import face_recognition``, which makes Pillow fill them with grey), and images over
40 MP :class:`visage.errors.ImageTooLarge`, from the header, before any pixel is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import align as _align
from ..imageio import DEFAULT_MAX_PIXELS, Source, read_bytes, strict_image
from ..models import make_detector, make_embedder
from ..models.base import Box, Detection, Image
from ..models.dlib_runtime import DlibLandmarker

Css = tuple[int, int, int, int]

__all__ = [
    "batch_face_locations",
    "compare_faces",
    "face_distance",
    "face_encodings",
    "face_landmarks",
    "face_locations",
    "load_image_file",
]


@cache
def _detector(model: str) -> Any:
    if model not in ("hog", "cnn"):
        raise ValueError(f"model must be 'hog' or 'cnn', not {model!r}")
    return make_detector(model)


@cache
def _landmarker(points: int) -> DlibLandmarker:
    return DlibLandmarker(points)


@cache
def _embedder() -> Any:
    return make_embedder()


def _to_css(box: Box) -> Css:
    left, top, right, bottom = box
    return (top, right, bottom, left)


def _from_css(css: Sequence[int]) -> Box:
    top, right, bottom, left = (int(v) for v in css)
    return (left, top, right, bottom)


def load_image_file(file: Source | Any, mode: str = "RGB") -> Image:
    """Load an image file (path, bytes or file object) as a numpy array in ``mode`` ('RGB' or 'L').

    Like the original, EXIF orientation is *not* applied (use :func:`visage.load_image` for that).
    Decoded by :func:`visage.imageio.strict_image`: over :data:`~visage.imageio.DEFAULT_MAX_PIXELS`
    (40 MP) is :class:`~visage.errors.ImageTooLarge` from the header, truncated or corrupt
    data :class:`~visage.errors.InvalidImage`, both :class:`~visage.errors.InputError`.
    """
    data, name = read_bytes(file)
    with strict_image(data, max_pixels=DEFAULT_MAX_PIXELS, source=name) as im:
        decoded = im
    # converted outside the block: a mode Pillow cannot make stays the caller's ValueError
    return np.array(decoded.convert(mode) if mode else decoded)


def _raw_locations(img: Image, upsample: int, model: str) -> list[Detection]:
    return list(_detector(model).detect(img, upsample=upsample))


def face_locations(img: Image, number_of_times_to_upsample: int = 1, model: str = "hog") -> list[Css]:
    """Bounding boxes ``(top, right, bottom, left)`` of the faces in ``img``."""
    return [_to_css(d.box) for d in _raw_locations(img, number_of_times_to_upsample, model)]


def batch_face_locations(
    images: list[Image], number_of_times_to_upsample: int = 1, batch_size: int = 128
) -> list[list[Css]]:
    """CNN face locations for many same-sized images, batched on the network."""
    detector = _detector("cnn")
    out: list[list[Css]] = []
    for i in range(0, len(images), batch_size):
        found = detector.detect_many(images[i : i + batch_size], upsample=number_of_times_to_upsample)
        out.extend([_to_css(d.box) for d in dets] for dets in found)
    return out


def _raw_landmarks(img: Image, locations: Sequence[Css] | None, model: str) -> list[npt.NDArray[np.float32]]:
    if model not in ("large", "small"):
        raise ValueError(f"model must be 'large' or 'small', not {model!r}")
    if locations is None:
        rects = [d.landmark_rect for d in _raw_locations(img, 1, "hog")]
    else:
        rects = [_from_css(css) for css in locations]
    return _landmarker(68 if model == "large" else 5).landmarks(img, rects)


def _points(arr: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    return [(int(x), int(y)) for x, y in arr]


def face_landmarks(
    face_image: Image, face_locations: Sequence[Css] | None = None, model: str = "large"
) -> list[dict[str, list[tuple[int, int]]]]:
    """Facial feature points per face, keyed by feature name (the original's layout)."""
    out = []
    for arr in _raw_landmarks(face_image, face_locations, model):
        p = _points(arr)
        if model == "large":
            out.append({
                "chin": p[0:17],
                "left_eyebrow": p[17:22],
                "right_eyebrow": p[22:27],
                "nose_bridge": p[27:31],
                "nose_tip": p[31:36],
                "left_eye": p[36:42],
                "right_eye": p[42:48],
                "top_lip": p[48:55] + [p[64], p[63], p[62], p[61], p[60]],
                "bottom_lip": p[54:60] + [p[48], p[60], p[67], p[66], p[65], p[64]],
            })
        else:
            out.append({"nose_tip": [p[4]], "left_eye": p[2:4], "right_eye": p[0:2]})
    return out


def _chip(img: Image, marks: npt.NDArray[np.float32]) -> Image:
    if len(marks) == 5:
        return _align.align(img, marks)
    import dlib  # dlib's 68-point template; the 5-point path is Visage's own alignment

    pts = [dlib.point(int(x), int(y)) for x, y in marks]
    xs, ys = marks[:, 0], marks[:, 1]
    shape = dlib.full_object_detection(dlib.rectangle(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), pts)
    return np.asarray(dlib.get_face_chip(img, shape, _align.CHIP_SIZE, _align.CHIP_PADDING), np.uint8)


def face_encodings(
    face_image: Image,
    known_face_locations: Sequence[Css] | None = None,
    num_jitters: int = 1,
    model: str = "small",
) -> list[npt.NDArray[np.float64]]:
    """128-d encodings (dlib scale, float64) of each face.

    ``num_jitters`` > 1 re-samples each face that many times with random jitter and averages:
    more stable, N times slower (and, as in the original, not deterministic).
    """
    marks = _raw_landmarks(face_image, known_face_locations, model)
    if not marks:
        return []
    chips = np.stack([_chip(face_image, m) for m in marks])
    embedder = _embedder()
    if num_jitters <= 1:
        return [np.asarray(v, dtype=np.float64) for v in embedder.embed_chips(chips)]
    import dlib

    out = []
    for chip in chips:
        jittered = np.stack([np.asarray(j, np.uint8) for j in dlib.jitter_image(chip, num_jitters)])
        out.append(np.asarray(embedder.embed_chips(jittered), np.float64).mean(axis=0))
    return out


def face_distance(face_encodings: Sequence[npt.ArrayLike] | npt.ArrayLike, face_to_compare: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Euclidean distance from ``face_to_compare`` to each known encoding (smaller = more alike)."""
    known = np.asarray(face_encodings, dtype=np.float64)
    if known.size == 0:
        return np.empty((0,))
    return np.asarray(np.linalg.norm(known - np.asarray(face_to_compare, dtype=np.float64), axis=1))


def compare_faces(
    known_face_encodings: Sequence[npt.ArrayLike] | npt.ArrayLike,
    face_encoding_to_check: npt.ArrayLike,
    tolerance: float = 0.6,
) -> list[bool]:
    """Which known encodings match, at ``tolerance`` (0.6 is typical; lower is stricter)."""
    return [bool(d <= tolerance) for d in face_distance(known_face_encodings, face_encoding_to_check)]
