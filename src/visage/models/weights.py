"""The model files Visage uses, where they come from, and their checksums.

All weights ship in the ``face_recognition_models`` package (CC0, dlib's models). Nothing is
ever downloaded. Each file is checked against its sha256 the first time it is used in a process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import ModelError


@dataclass(frozen=True)
class ModelFile:
    """One weights file: its name in Visage, file name in the package, task and checksum."""

    name: str
    filename: str
    task: str
    sha256: str


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
    )
}


def _package_dir() -> Path:
    try:
        return Path(str(resources.files("face_recognition_models"))) / "models"
    except ModuleNotFoundError:
        raise ModelError(
            "the face_recognition_models package is not installed: pip install face_recognition_models"
        ) from None


@cache
def model_path(name: str) -> Path:
    """Path of model ``name`` (a key of :data:`MODEL_FILES`), verified against its sha256."""
    try:
        spec = MODEL_FILES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_FILES)}") from None
    path = _package_dir() / spec.filename
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise ModelError(f"model file {path} is corrupt: sha256 {digest.hexdigest()} != {spec.sha256}")
    return path
