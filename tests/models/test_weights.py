"""Corrupted weights are refused or replaced, never used: through the real CLI, in subprocesses.

The shipped weights are read from the ``face_recognition_models`` package; a copy of it, with one
byte of the embedder flipped, is put first on ``PYTHONPATH`` (the other files linked to the
installed ones). The ONNX conversions live in ``$VISAGE_CACHE``, a fresh folder per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import face_recognition_models

from tests.conftest import REPO

RESNET = "dlib_face_recognition_resnet_model_v1.dat"


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def corrupted_package(root: Path) -> Path:
    """A copy of ``face_recognition_models`` whose embedder weights have one byte flipped."""
    shipped = Path(face_recognition_models.__file__).parent
    models = root / "face_recognition_models" / "models"
    models.mkdir(parents=True)
    (models.parent / "__init__.py").write_bytes((shipped / "__init__.py").read_bytes())
    for weights in (shipped / "models").glob("*.dat"):
        (models / weights.name).symlink_to(weights)
    (models / RESNET).unlink()
    (models / RESNET).write_bytes((shipped / "models" / RESNET).read_bytes())
    flip_middle_byte(models / RESNET)
    return root


def compare(
    cache: Path, photos: list[Path], *, first_on_path: Path | None = None
) -> tuple[int, str, str]:
    """``visage compare`` of the first two photos: exit code, stdout, stderr."""
    path = [str(first_on_path)] if first_on_path else []
    env = {**os.environ, "VISAGE_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([*path, str(REPO / "src")])}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "visage", "compare", str(photos[0]), str(photos[1]), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_corrupted_shipped_weights_are_refused_in_one_line(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    code, out, err = compare(tmp_path / "clean-cache", people_photos)
    assert code == 0 and json.loads(out)["distance"] >= 0, err  # the control: intact weights
    package = corrupted_package(tmp_path / "site")
    code, out, err = compare(tmp_path / "cache", people_photos, first_on_path=package)
    assert code == 1 and not out, (out, err)
    line = err.strip()
    assert line.startswith(f"error: model file {package / 'face_recognition_models'}")
    assert "is corrupt: sha256" in line and "\n" not in line and "Traceback" not in err


def test_a_corrupted_cached_conversion_is_converted_again(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    """One flipped byte in the cached ONNX embedder changed a pair's distance (0.34 to 0.07)
    before the cache was checked; now the file is converted again, with a warning, and the
    answer is the one the intact weights give."""
    cache = tmp_path / "cache"
    code, out, err = compare(cache, people_photos)
    assert code == 0, err
    expected = json.loads(out)["distance"]
    (converted,) = cache.glob("resnet-*.onnx")
    assert converted.with_name(converted.name + ".sha256").is_file()
    flip_middle_byte(converted)
    code, out, err = compare(cache, people_photos)
    assert code == 0, err
    assert json.loads(out)["distance"] == expected
    assert "does not match its sha256: converting it again" in err
    code, out, err = compare(cache, people_photos)  # the repaired cache is used quietly
    assert code == 0 and "converting" not in err and json.loads(out)["distance"] == expected
