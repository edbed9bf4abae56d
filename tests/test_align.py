"""Alignment reproduces dlib's face chips, so embeddings match dlib's own path."""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from tests.conftest import DlibFace
from visage import align
from visage.models.dlib_runtime import DlibEmbedder, DlibLandmarker, HogDetector


def test_chips_and_embeddings_equal_dlibs_own_path(
    dlib_faces: list[DlibFace], dlib_descriptors: npt.NDArray[np.float64]
) -> None:
    """Every 5th face of dlib's path on people/: our chip from its landmarks is byte-identical
    to dlib's, and our dlib embedder's descriptor of our chip within 1e-5 of dlib's own."""
    embedder = DlibEmbedder()
    checked = 0
    for face, descriptor in zip(dlib_faces[::5], dlib_descriptors[::5], strict=True):
        with Image.open(face.photo) as im:
            img = np.asarray(im.convert("RGB"))
        ours = align.align(img, face.marks)
        assert np.array_equal(ours, face.chip), f"chip differs for {face.photo.name}"
        got = embedder.embed_chips(ours[None])[0]
        assert np.abs(got - descriptor).max() <= 1e-5, f"embedding differs for {face.photo.name}"
        checked += 1
    assert checked >= 80


def test_large_face_uses_pyramid_path(people_photos: list[Path]) -> None:
    """A face upscaled 4x needs dlib's anti-aliasing pyramid; the chip still matches dlib."""
    img = dlib.load_rgb_image(str(people_photos[0]))
    big = np.ascontiguousarray(np.kron(img, np.ones((4, 4, 1), np.uint8)))
    det = HogDetector().detect(big, upsample=0)[0]
    shape = DlibLandmarker(5).raw(big, det.landmark_rect)
    marks = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
    assert align.placement(marks).needs_pyramid()
    assert np.array_equal(align.align(big, marks), np.asarray(dlib.get_face_chip(big, shape, 150, 0.25)))


def test_placement_rejects_wrong_landmark_count() -> None:
    with pytest.raises(ValueError, match="5 landmarks"):
        align.placement(np.zeros((68, 2)))


def test_face_at_border_gets_black_outside() -> None:
    img = np.full((100, 100, 3), 200, np.uint8)
    marks = np.array([[95, 30], [85, 30], [60, 30], [70, 30], [78, 60]], np.float32) - [0, 25]
    chip = align.align(img, marks)
    assert chip.shape == (150, 150, 3)
    assert (chip == 0).all(axis=2).any() and (chip == 200).all(axis=2).any()


def test_face_cut_by_the_border_matches_dlib(people_photos: list[Path]) -> None:
    """A face whose chip reaches past the left and top edges: inside pixels and the black
    outside are dlib's, byte for byte (the sampler clamps its reads there)."""
    img = dlib.load_rgb_image(str(people_photos[0]))
    det = HogDetector().detect(img)[0]
    left, top = det.landmark_rect[0] + 10, det.landmark_rect[1] + 10
    cut = np.ascontiguousarray(img[top:, left:])
    shape = DlibLandmarker(5).raw(cut, (0, 0, det.landmark_rect[2] - left, det.landmark_rect[3] - top))
    marks = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
    ours, theirs = align.align(cut, marks), np.asarray(dlib.get_face_chip(cut, shape, 150, 0.25))
    assert (ours == 0).all(axis=2).sum() > 1000
    assert np.array_equal(ours, theirs)
