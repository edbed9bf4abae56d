"""visage.compat.face_recognition agrees with the real face_recognition package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visage.compat import face_recognition as compat
from visage.errors import InvalidImage

fr = pytest.importorskip("face_recognition", reason="face_recognition is a test-only dependency")


def test_hog_boxes_and_encodings_agree_on_every_people_photo(people_photos: list[Path]) -> None:
    worst_box, worst_enc = 0, 0.0
    for path in people_photos:
        theirs_img, ours_img = fr.load_image_file(path), compat.load_image_file(path)
        assert np.array_equal(theirs_img, ours_img), path.name
        theirs, ours = fr.face_locations(theirs_img), compat.face_locations(ours_img)
        assert len(theirs) == len(ours), f"{path.name}: {theirs} vs {ours}"
        for a, b in zip(theirs, ours):
            worst_box = max(worst_box, max(abs(x - y) for x, y in zip(a, b)))
        for a, b in zip(fr.face_encodings(theirs_img), compat.face_encodings(ours_img)):
            assert a.dtype == b.dtype == np.float64 and a.shape == b.shape == (128,)
            worst_enc = max(worst_enc, float(np.abs(a - b).max()))
            assert worst_enc <= 1e-4, f"{path.name}: encodings differ by {worst_enc}"
    assert worst_box <= 2


def test_landmarks_large_and_small_agree(people_photos: list[Path]) -> None:
    for path in people_photos[::15]:
        img = fr.load_image_file(path)
        assert compat.face_landmarks(img) == fr.face_landmarks(img), path.name
        assert compat.face_landmarks(img, model="small") == fr.face_landmarks(img, model="small")


def test_known_locations_and_large_model_encodings(people_photos: list[Path]) -> None:
    for path in people_photos[::30]:
        img = fr.load_image_file(path)
        boxes = fr.face_locations(img)
        for model in ("small", "large"):
            a = fr.face_encodings(img, boxes, model=model)
            b = compat.face_encodings(img, boxes, model=model)
            assert len(a) == len(b) and all(np.abs(x - y).max() <= 1e-4 for x, y in zip(a, b))


def close_boxes(a: list[tuple[int, ...]], b: list[tuple[int, ...]], tol: int = 2) -> bool:
    return len(a) == len(b) and all(max(abs(x - y) for x, y in zip(u, v)) <= tol for u, v in zip(a, b))


def test_cnn_locations_agree(people_photos: list[Path]) -> None:
    """MMOD runs on ONNX here: boxes within 2 px of dlib's, same count."""
    sample = [fr.load_image_file(p) for p in people_photos[:3]]
    for img in sample:
        assert close_boxes(compat.face_locations(img, model="cnn"), fr.face_locations(img, model="cnn"))
    ours = compat.batch_face_locations(sample, batch_size=2)
    theirs = fr.batch_face_locations(sample, batch_size=2)
    assert len(ours) == len(theirs) and all(close_boxes(a, b) for a, b in zip(ours, theirs))


def test_distance_and_compare_semantics(people_photos: list[Path]) -> None:
    encs = [compat.face_encodings(compat.load_image_file(p))[0] for p in people_photos[:3]]
    np.testing.assert_allclose(compat.face_distance(encs, encs[0]), fr.face_distance(encs, encs[0]))
    assert compat.compare_faces(encs, encs[0]) == fr.compare_faces(encs, encs[0])
    assert compat.compare_faces(encs, encs[0], tolerance=0.0) == [True, False, False]
    assert compat.face_distance([], encs[0]).shape == (0,)


def test_jitter_averages_close_to_plain(people_photos: list[Path]) -> None:
    img = compat.load_image_file(people_photos[0])
    plain, jittered = compat.face_encodings(img)[0], compat.face_encodings(img, num_jitters=5)[0]
    assert 0 < np.linalg.norm(plain - jittered) < 0.2


def test_bad_file_and_bad_options(tmp_path: Path) -> None:
    bad = tmp_path / "x.jpg"
    bad.write_text("text")
    with pytest.raises(InvalidImage, match="x.jpg"):
        compat.load_image_file(bad)
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="hog"):
        compat.face_locations(img, model="mtcnn")
    with pytest.raises(ValueError, match="large"):
        compat.face_landmarks(img, model="huge")
