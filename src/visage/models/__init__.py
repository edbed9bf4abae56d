"""Model runtimes behind the protocols of :mod:`visage.models.base`, chosen by name.

Names are checked: an unknown name is a ``ValueError``, never a silent fallback.
"""

from __future__ import annotations

from .base import Detection, Detector, Embedder, Landmarker
from .weights import MODEL_FILES, ModelFile, model_path

DETECTORS = ("hog", "cnn")
RUNTIMES = ("dlib",)

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
]


def make_detector(name: str, *, runtime: str = "dlib") -> Detector:
    """A detector by name: ``hog`` (fast, frontal) or ``cnn`` (dlib's MMOD, finds more)."""
    from .dlib_runtime import HogDetector, MmodDetector

    _check_runtime(runtime)
    if name == "hog":
        return HogDetector()
    if name == "cnn":
        return MmodDetector()
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


def make_landmarker(points: int = 5) -> Landmarker:
    """dlib's shape predictor with 5 or 68 points."""
    from .dlib_runtime import DlibLandmarker

    return DlibLandmarker(points)


def make_embedder(runtime: str = "dlib") -> Embedder:
    """The ResNet embedder on the given runtime."""
    from .dlib_runtime import DlibEmbedder

    _check_runtime(runtime)
    return DlibEmbedder()


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
