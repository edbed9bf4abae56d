"""Visage: self-hosted, accountable face recognition.

    >>> import visage
    >>> faces = visage.embed("group.jpg")          # every face, largest first
    >>> visage.compare("a.jpg", "b.jpg").same        # calibrated threshold, with provenance
"""

from __future__ import annotations

from .api import compare, detect, embed, group, pipeline
from .decision import Calibration, Comparison, distance, distances
from .errors import (
    AmbiguousFace,
    ImageTooLarge,
    InputError,
    InvalidImage,
    ModelError,
    NoFace,
    VisageError,
)
from .imageio import load_image
from .pipeline import Face, ImageResult, Pipeline
from .quality import Quality

__version__ = "0.1.0"

__all__ = [
    "AmbiguousFace",
    "Calibration",
    "Comparison",
    "Face",
    "ImageResult",
    "ImageTooLarge",
    "InputError",
    "InvalidImage",
    "ModelError",
    "NoFace",
    "Pipeline",
    "Quality",
    "VisageError",
    "__version__",
    "compare",
    "detect",
    "distance",
    "distances",
    "embed",
    "group",
    "load_image",
    "pipeline",
]
