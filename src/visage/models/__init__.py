"""Model runtimes behind the protocols of :mod:`visage.models.base`, chosen by name.

Runtimes: ``onnx`` (dlib's weights converted to ONNX, run by onnxruntime: ~16x faster embedding,
~8x faster MMOD detection, same descriptors within 1e-6), ``dlib`` (dlib-bin itself), and
``auto`` — onnx when onnxruntime is installed, else dlib. Names are checked: an unknown name is
a ``ValueError``, never a silent fallback. HOG detection and landmarks always run on dlib;
the ``blazeface`` detector (MediaPipe's BlazeFace, :mod:`.blazeface`) always on onnxruntime.
"""

from __future__ import annotations

from .base import Detection, Detector, Embedder, Landmarker
from .weights import MODEL_FILES, ModelFile, model_path

DETECTORS = ("hog", "cnn", "blazeface", "blazeface-short")
RUNTIMES = ("auto", "onnx", "dlib")

__all__ = [
    "DETECTORS",
    "MODEL_FILES",
    "RUNTIMES",
    "Detection",
    "Detector",
    "Embedder",
    "Landmarker",
    "ModelFile",
    "make_detector",
    "make_embedder",
    "make_landmarker",
    "model_path",
    "resolve_runtime",
]


def resolve_runtime(runtime: str) -> str:
    """``auto`` → ``onnx`` when onnxruntime imports, else ``dlib``; other names are checked."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    from .sessions import onnx_available

    return "onnx" if onnx_available() else "dlib"


def make_detector(name: str, *, runtime: str = "auto", threads: int | None = None) -> Detector:
    """A detector by name: ``hog`` (dlib, frontal), ``cnn`` (dlib's MMOD, finds more), or
    MediaPipe's BlazeFace (the ``fast-detector`` extra): ``blazeface`` (full-range model, ~6x
    HOG's speed) or ``blazeface-short`` (short-range, ~14x, for faces filling the photo)."""
    from .dlib_runtime import HogDetector, MmodDetector

    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if name == "hog":
        return HogDetector()
    if name.startswith("blazeface"):
        from .blazeface import BlazeFaceDetector

        return BlazeFaceDetector("short" if name == "blazeface-short" else "full", threads=threads)
    if resolve_runtime(runtime) == "onnx":
        from .onnx_runtime import OnnxMmodDetector

        return OnnxMmodDetector(threads=threads)
    return MmodDetector()


def make_landmarker(points: int = 5) -> Landmarker:
    """dlib's shape predictor with 5 or 68 points."""
    from .dlib_runtime import DlibLandmarker

    return DlibLandmarker(points)


def make_embedder(runtime: str = "auto", *, threads: int | None = None) -> Embedder:
    """The ResNet embedder (fp32) on the given runtime. For INT8, build
    :class:`~visage.models.onnx_runtime.OnnxEmbedder` with ``quantized=True`` and inject it."""
    if resolve_runtime(runtime) == "onnx":
        from .onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(threads=threads)
    from .dlib_runtime import DlibEmbedder

    return DlibEmbedder()
