"""visage.compat.face_recognition agrees with the real face_recognition package."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile

from tests.conftest import DlibFace
from visage.compat import face_recognition as compat
from visage.errors import ImageTooLarge, InputError, InvalidImage

fr = pytest.importorskip("face_recognition", reason="face_recognition is a test-only dependency")


def test_hog_boxes_and_encodings_agree_on_every_people_photo(
    people_photos: list[Path], dlib_faces: list[DlibFace], dlib_descriptors: npt.NDArray[np.float64]
) -> None:
    """Images, HOG boxes and encodings of every people/ photo. The encodings (no boxes given, so
    landmarks from dlib's untrimmed rectangles) against dlib's own descriptors of the same
    faces: the numbers ``face_recognition.face_encodings(image)`` returns, computed once for
    the session (its API itself is compared on a sample below)."""
    reference: dict[Path, list[npt.NDArray[np.float64]]] = {}
    for face, descriptor in zip(dlib_faces, dlib_descriptors, strict=True):
        reference.setdefault(face.photo, []).append(descriptor)
    worst_box, worst_enc = 0, 0.0
    for path in people_photos:
        theirs_img, ours_img = fr.load_image_file(path), compat.load_image_file(path)
        assert np.array_equal(theirs_img, ours_img), path.name
        theirs, ours = fr.face_locations(theirs_img), compat.face_locations(ours_img)
        expected = reference.get(path, [])
        assert len(theirs) == len(ours) == len(expected), f"{path.name}: {theirs} vs {ours}"
        for a, b in zip(theirs, ours):
            worst_box = max(worst_box, max(abs(x - y) for x, y in zip(a, b)))
        for a, b in zip(expected, compat.face_encodings(ours_img)):
            assert b.dtype == np.float64 and a.shape == b.shape == (128,)
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


def solid_png(width: int, height: int) -> bytes:
    """A complete, valid PNG of ``width x height`` black grey pixels, compressed row by row:
    ~1 KB per megapixel on disk, a byte per pixel decoded (three as RGB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte 0, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PEAK_RSS = """
import resource, sys, time
from visage.compat import face_recognition as compat
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
try:
    compat.load_image_file(sys.argv[1])
    outcome = "loaded"
except Exception as exc:
    outcome = f"{type(exc).__name__} {exc}"
extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
print(time.perf_counter() - start, extra_mb, outcome)
"""
"""Prints the seconds ``load_image_file(argv[1])`` took, the MB it added to the peak RSS of a
fresh process, and what came of it."""


def test_a_100_mp_png_is_refused_fast_from_its_header(tmp_path: Path) -> None:
    """face_recognition's load_image_file decodes it: ~1.1 GB for a ~100 KB file."""
    path = tmp_path / "100mp.png"
    path.write_bytes(solid_png(10_000, 10_000))
    assert path.stat().st_size < 200_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(path) as im:
        assert im.size == (10_000, 10_000)  # a real 100 MP image, which Pillow only warns of
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seconds, extra_mb, outcome = done.stdout.split(" ", 2)
    assert outcome.startswith("ImageTooLarge ") and "100mp.png" in outcome, done.stdout
    assert "40,000,000" in outcome and float(seconds) < 1.0 and int(extra_mb) < 200, done.stdout


def test_a_210_mp_png_is_our_error_not_pillows(tmp_path: Path) -> None:
    path = tmp_path / "210mp.png"
    path.write_bytes(solid_png(14_500, 14_500))
    with pytest.raises(Image.DecompressionBombError):
        fr.load_image_file(path)  # what the original lets out
    with pytest.raises(ImageTooLarge, match="210,250,000 pixels") as info:
        compat.load_image_file(path)
    assert isinstance(info.value, InputError) and info.value.source and "210mp.png" in info.value.source


def test_a_truncated_jpeg_is_refused_after_import_face_recognition(
    people_photos: list[Path], tmp_path: Path
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # face_recognition's import set it
    whole = people_photos[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    assert fr.load_image_file(cut).shape == compat.load_image_file(people_photos[0]).shape
    with pytest.raises(InvalidImage, match="cut.jpg.*truncated"):
        compat.load_image_file(cut)
    with pytest.raises(InvalidImage, match="truncated"), open(cut, "rb") as fh:
        compat.load_image_file(fh)  # a file object too
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # face_recognition's setting is left as it was
