"""The ONNX runtime against dlib itself, on the labelled photos.

- Embeddings: for every ``people/*/*.jpg`` photo, the faces dlib's HOG detector finds are aligned
  by dlib (5-point landmarks, ``get_face_chip(img, shape, 150, 0.25)``) and embedded by dlib's
  ``face_recognition_model_v1`` and by :class:`OnnxEmbedder`; they must agree within 1e-4 (max
  abs difference, unnormalised).
- MMOD: boxes within 2 px of ``cnn_face_detection_model_v1`` and the same count, at the default
  ``upsample=1``, on every 15th photo (30): dlib's detector costs ~2 s per photo on 2 cores,
  so the whole set would take 15 minutes.
- The converter: deterministic bytes, a cached file reused, malformed files a ``ModelError``.

Photos come from ``$VISAGE_FACES`` (default ``../shared/faces``); without them the photo tests
skip with a message naming VISAGE_FACES. Converted models go to a temporary ``VISAGE_CACHE``.
The whole file takes about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import logging
import pickle
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import DlibFace
from visage.cli import app as cli_app
from visage.errors import ModelError
from visage.models import onnx_convert
from visage.models.dlib_format import parse_net
from visage.models.int8 import MAX_DRIFT, checked_int8_model, cpu_int8, int8_status
from visage.models.onnx_convert import convert, converted_model_path, file_sha256
from visage.models.onnx_runtime import OnnxEmbedder, OnnxMmodDetector
from visage.models.weights import model_path

dlib = pytest.importorskip("dlib")

TOLERANCE = 1e-4
BOX_PX = 2


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Conversions of this module go to a fresh folder, not the user's cache."""
    path = tmp_path_factory.mktemp("visage-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISAGE_CACHE", str(path))
        yield path


def _load(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class Chips:
    """dlib-aligned chips of every face dlib's HOG detector finds, and the photo of each."""

    chips: npt.NDArray[np.uint8]
    photos: list[str]
    photos_seen: int


@pytest.fixture(scope="module")
def dlib_chips(people_photos: list[Path], dlib_faces: list[DlibFace]) -> Chips:
    return Chips(
        np.stack([f.chip for f in dlib_faces]),
        [f"{f.photo.parent.name}/{f.photo.name}" for f in dlib_faces],
        len(people_photos),
    )


def test_embeddings_equal_dlib_on_every_photo(
    dlib_chips: Chips, dlib_descriptors: npt.NDArray[np.float64]
) -> None:
    assert len(set(dlib_chips.photos)) >= 0.9 * dlib_chips.photos_seen, "HOG found too few faces"
    expected = dlib_descriptors.astype(np.float32)
    got = OnnxEmbedder().embed_chips(dlib_chips.chips)
    assert got.shape == expected.shape and got.dtype == np.float32
    diffs = np.abs(got - expected).max(axis=1)
    failures = [
        f"{photo}: max abs difference {d:.2e}"
        for photo, d in zip(dlib_chips.photos, diffs)
        if not d <= TOLERANCE
    ]
    assert not failures, f"{len(failures)} faces differ from dlib by > {TOLERANCE}:\n" + "\n".join(
        failures
    )


def test_batching_does_not_change_descriptors(dlib_chips: Chips) -> None:
    chips = dlib_chips.chips[:20]
    batched = OnnxEmbedder(batch_size=8).embed_chips(chips)
    single = np.concatenate([OnnxEmbedder().embed_chips(c[None]) for c in chips[:4]])
    assert np.abs(batched[:4] - single).max() <= 1e-5
    assert OnnxEmbedder().embed_chips(chips[:0]).shape == (0, 128)


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def test_int8_embedder_stays_close_or_falls_back_to_fp32(dlib_chips: Chips) -> None:
    """On any CPU: either the checked INT8 model runs, keeps held-out descriptors within the
    bound and has its own model id, or the embedder is fp32 under fp32's id. Never a wrong
    INT8 model in silence."""
    calibration, held_out = dlib_chips.chips[:64], dlib_chips.chips[64:224]
    int8 = OnnxEmbedder(quantized=True, calibration_chips=calibration)
    check = int8.int8_check
    assert check is not None and check.held_out == 16 and check.bound == MAX_DRIFT == 0.1
    fp32 = OnnxEmbedder().embed_chips(held_out)
    q = int8.embed_chips(held_out)
    if check.in_use:
        assert int8.model_id == "dlib_resnet_v1_int8" != OnnxEmbedder().model_id
        moved = np.linalg.norm(_unit(fp32) - _unit(q), axis=1)
        # Same-person pairs sit below ~0.87 (L2 of the 0.3764 cosine threshold); INT8 moves a
        # descriptor by ~0.03 on average.
        assert moved.max() < MAX_DRIFT, f"INT8 moved a descriptor by {moved.max():.3f}"
        assert 0 < check.drift_max <= MAX_DRIFT
    else:
        assert int8.model_id == OnnxEmbedder().model_id
        assert np.array_equal(q, fp32)
    again = OnnxEmbedder(quantized=True, calibration_chips=calibration)
    assert np.array_equal(again.embed_chips(held_out[:8]), q[:8])


def test_a_corrupted_cached_int8_model_is_quantized_again(
    dlib_chips: Chips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The INT8 verdict is kept per CPU beside the quantized model; it now names the model's
    sha256, so a model corrupted in the cache after it was checked is quantized again rather
    than run on the strength of a check of other bytes."""
    monkeypatch.setenv("VISAGE_CACHE", str(tmp_path / "cache"))
    calibration = dlib_chips.chips[:64]
    first = checked_int8_model(calibration)
    (model,) = (tmp_path / "cache").glob("*-int8r-*.onnx")
    assert first.model_sha256 == file_sha256(model)  # the positive control: the check names it
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="visage.models.int8"):
        again = checked_int8_model(calibration)
    assert "does not match its check" in caplog.text
    assert again.model_sha256 == file_sha256(model) == first.model_sha256
    assert again.in_use == first.in_use


def test_int8_falls_back_with_one_warning_naming_the_cpu(
    dlib_chips: Chips, isolated_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bound no INT8 model can hold (1e-6) forces the fallback on every CPU: fp32 runs under
    fp32's id, one warning names the CPU's INT8 features, the verdict is in the cache and
    ``visage version`` reports it."""
    calibration, held_out = dlib_chips.chips[:40], dlib_chips.chips[64:72]
    with caplog.at_level(logging.WARNING, logger="visage.models.int8"):
        embedder = OnnxEmbedder(quantized=True, calibration_chips=calibration, max_drift=1e-6)
        assert embedder.model_id == "dlib_resnet_v1"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    cpu = cpu_int8()
    assert "INT8 embedder not used on this CPU" in warnings[0] and cpu.describe() in warnings[0]
    if not cpu.dot_product and cpu.flags:
        assert "no 8-bit dot product" in warnings[0]
    assert np.array_equal(embedder.embed_chips(held_out), OnnxEmbedder().embed_chips(held_out))
    check = embedder.int8_check
    assert check is not None and not check.in_use and check.drift_max > 1e-6
    records = list(isolated_cache.glob(f"*.check-{cpu.signature}.json"))
    assert any(json.loads(r.read_text())["bound"] == 1e-6 for r in records)
    status = int8_status()
    assert status["status"] == check.summary() and "falls back to fp32" in str(status["status"])
    result = CliRunner().invoke(cli_app, ["version", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["int8"]["status"].startswith("falls back to fp32")


def test_int8_needs_enough_calibration_chips(dlib_chips: Chips) -> None:
    with pytest.raises(ValueError, match="at least 8 calibration chips"):
        _ = OnnxEmbedder(quantized=True, calibration_chips=dlib_chips.chips[:7]).model_id


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU without VNNI")
def test_int8_holds_on_avx2_without_vnni(dlib_chips: Chips, tmp_path: Path) -> None:
    """The CPU that broke INT8 (AVX2, no AVX-512, no VNNI), emulated by qemu-user as a Haswell:
    the shipped settings stay within the bound there, while the old ones (8-bit weights, the
    positive control) saturate onnxruntime's ``vpmaddubsw`` kernel and drift past it."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 is missing: `make setup` installs Debian's qemu-user")
    calibration, held_out = dlib_chips.chips[:64], dlib_chips.chips[64:80]
    check = checked_int8_model(calibration)
    shipped = converted_model_path("resnet").with_name(check.model)
    old = tmp_path / "old.onnx"
    _quantize_8bit(calibration, old)
    np.save(tmp_path / "chips.npy", held_out)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_run.py"
    args = [str(shipped), str(tmp_path / "new.npy"), str(old), str(tmp_path / "old.npy")]
    cmd = [qemu, "-cpu", "Haswell-v4", sys.executable, str(script), str(tmp_path / "chips.npy")]
    done = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    fp32 = _unit(OnnxEmbedder().embed_chips(held_out))
    new = np.linalg.norm(fp32 - _unit(np.load(tmp_path / "new.npy")), axis=1)
    before = np.linalg.norm(fp32 - _unit(np.load(tmp_path / "old.npy")), axis=1)
    assert before.max() > MAX_DRIFT, f"control: 8-bit weights moved only {before.max():.3f}"
    assert new.max() < MAX_DRIFT, f"on AVX2 the shipped INT8 moved a descriptor {new.max():.3f}"


def _quantize_8bit(chips: npt.NDArray[np.uint8], out: Path) -> None:
    """The settings before the fix: QDQ, per-channel s8 weights over the full 8-bit range."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(
                [{"chips": chips[i : i + 16].astype(np.float32)} for i in (0, 16, 32, 48)]
            )

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            return next(self.batches, None)

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(converted_model_path("resnet"), prepared, skip_symbolic_shape=True)
    quantize_static(
        prepared,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def test_quantized_needs_calibration_chips() -> None:
    with pytest.raises(ValueError, match="calibration_chips"):
        OnnxEmbedder(quantized=True)


def _rects(found: Any) -> list[tuple[tuple[int, int, int, int], float]]:
    return [
        ((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.confidence)
        for d in found
    ]


def test_mmod_boxes_match_dlib(people_photos: list[Path]) -> None:
    """Every 30th people/ photo (15, at one upsample: dlib's MMOD takes ~1.7 s a photo here)."""
    reference = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))
    detector = OnnxMmodDetector()
    assert detector.name == "cnn"  # the public detector name, as in face_recognition
    failures, faces = [], 0
    for path in people_photos[::30]:
        img = _load(path)
        expected = _rects(reference(img, 1))
        got = detector.detect(img, upsample=1)
        faces += len(expected)
        name = f"{path.parent.name}/{path.name}"
        if len(got) != len(expected):
            failures.append(f"{name}: dlib found {len(expected)} faces, onnx {len(got)}")
            continue
        for (rect, score), det in zip(expected, got):
            assert det.rect is not None
            off = max(abs(a - b) for a, b in zip(rect, det.rect))
            if off > BOX_PX or abs(score - det.score) > 1e-2:
                failures.append(f"{name}: dlib {rect} {score:.3f}, onnx {det.rect} {det.score:.3f}")
            h, w = img.shape[:2]
            assert det.box == (max(rect[0], 0), max(rect[1], 0), min(rect[2], w), min(rect[3], h))
    assert faces > 0
    assert not failures, "MMOD differs from dlib:\n" + "\n".join(failures)


def test_mmod_batch_equals_single(people_photos: list[Path]) -> None:
    images = [_load(p) for p in people_photos[:3]]
    detector = OnnxMmodDetector()
    batched = detector.detect_many(images, upsample=0)
    assert batched == [detector.detect(img, upsample=0) for img in images]
    assert detector.detect_many([], upsample=0) == []


def test_mmod_tiny_images_have_no_faces() -> None:
    """Too small for the network (dlib raises there): no detections, and no runtime error."""
    detector = OnnxMmodDetector()
    for shape in [(1, 1, 3), (6, 40, 3), (40, 3, 3)]:
        assert detector.detect(np.zeros(shape, np.uint8), upsample=0) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8), upsample=1) == []


def test_conversion_is_deterministic() -> None:
    first = convert("resnet").SerializeToString(deterministic=True)
    second = convert("resnet").SerializeToString(deterministic=True)
    assert first == second
    mmod = convert("mmod").SerializeToString(deterministic=True)
    assert mmod == convert("mmod").SerializeToString(deterministic=True)


def test_cached_conversion_is_written_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISAGE_CACHE", str(tmp_path))
    path = converted_model_path("resnet")
    assert path.parent == tmp_path
    assert "55533b28a95800a5" in path.name and f"v{onnx_convert.CONVERTER_VERSION}" in path.name
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [path.name, path.name + ".sha256"], "temporary files left"
    assert path.read_bytes() == convert("resnet").SerializeToString(deterministic=True)

    def no_second_conversion(kind: str) -> None:
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(onnx_convert, "convert", no_second_conversion)
    assert converted_model_path("resnet") == path


def test_embedder_pickles_without_its_session(dlib_chips: Chips) -> None:
    embedder = OnnxEmbedder()
    before = embedder.embed_chips(dlib_chips.chips[:2])
    clone = pickle.loads(pickle.dumps(embedder))
    assert clone._session is None
    assert np.array_equal(clone.embed_chips(dlib_chips.chips[:2]), before)


def test_embed_chips_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="150,150,3"):
        OnnxEmbedder().embed_chips(np.zeros((1, 112, 112, 3), np.uint8))


@pytest.mark.parametrize("cut", [0, 3, 40, 5000, -7])
def test_malformed_files_raise_model_error(cut: int) -> None:
    data = model_path("mmod").read_bytes()
    with pytest.raises(ModelError, match="malformed dlib file"):
        parse_net(data[:cut] if cut >= 0 else data + b"\x00" * -cut, "mmod.dat")


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        converted_model_path("vgg")
