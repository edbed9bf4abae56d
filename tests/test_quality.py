"""The quality gate (``visage.quality``) measured on real photos, one reason at a time.

Each case takes a labelled photo that passes the gate (the control, asserted first), transforms
it the way the reason describes (shrink, blur, darken, brighten, shear the face sideways so the
nose leaves the eye midpoint, rotate, hide part of it from the detector) and expects exactly that
one reason, with the measure behind it past its limit and its sub-score below the clean photo's.
The expectations are the policy's limits, not the output of the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from visage.pipeline import Face, Pipeline, PipelineConfig
from visage.quality import DEFAULT_POLICY, Quality, QualityPolicy, detector_confidence

Transform = Callable[[Image.Image], Image.Image]
GREY = (128, 128, 128)
DETECTOR = PipelineConfig().detector
UNCERTAIN = QualityPolicy(min_detector_score=0.25)
"""A policy that asks for detector confidence 0.25 (the default asks for none)."""


def shear(k: float) -> Transform:
    """Shift each row sideways by ``k`` px per px below the centre: the nose (below the eyes)
    moves off the eye midpoint as in a turned head, the eye line stays level."""
    return lambda im: im.transform(
        im.size, Image.Transform.AFFINE, (1, k, -k * im.height / 2, 0, 1, 0),
        resample=Image.Resampling.BICUBIC, fillcolor=GREY,
    )


def rotate(degrees: float) -> Transform:
    return lambda im: im.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=GREY)


def shift(delta: int) -> Transform:
    """Add ``delta`` to every channel, clipped: brightness moves, contrast mostly stays."""
    return lambda im: im.point(lambda v: min(max(v + delta, 0), 255))


@dataclass(frozen=True)
class Case:
    photo: str  # people/<this>.jpg
    transform: Transform
    reason: str  # how the one expected reason starts
    component: str  # the sub-score that must drop
    past_limit: Callable[[Quality, QualityPolicy], bool]
    policy: QualityPolicy = DEFAULT_POLICY


AL = "Al_Sharpton/Al_Sharpton_0001"
CASES = {
    "size": Case(AL, lambda im: im.resize((70, 70), Image.Resampling.LANCZOS), "too small: ",
                 "size", lambda q, p: q.size < p.min_size),
    "sharpness": Case(AL, lambda im: im.filter(ImageFilter.GaussianBlur(2)), "blurred: ",
                      "sharpness", lambda q, p: q.sharpness < p.min_sharpness),
    "underexposure": Case(AL, shift(-85), "too dark: ", "exposure",
                          lambda q, p: q.brightness < p.min_brightness),
    "overexposure": Case(AL, shift(130), "overexposed: ", "exposure",
                         lambda q, p: q.brightness > p.max_brightness),
    "yaw": Case("Arnold_Schwarzenegger/Arnold_Schwarzenegger_0002", shear(0.15), "turned away: ",
                "pose", lambda q, p: abs(q.yaw) > p.max_yaw),
    "roll": Case("Angelina_Jolie/Angelina_Jolie_0002", rotate(48), "tilted: ", "pose",
                 lambda q, p: abs(q.roll) > p.max_roll),
    "uncertain detection": Case(
        "Angelina_Jolie/Angelina_Jolie_0002", shear(0.45), "uncertain detection: ", "detector",
        lambda q, p: detector_confidence(DETECTOR, q.detector_score) < p.min_detector_score, UNCERTAIN,
    ),
}


@pytest.fixture(scope="module")
def pipelines() -> dict[QualityPolicy, Pipeline]:
    return {policy: Pipeline(policy=policy) for policy in (DEFAULT_POLICY, UNCERTAIN)}


def only_face(pipeline: Pipeline, image: Image.Image) -> Face:
    faces = pipeline.detect(np.asarray(image.convert("RGB")))
    assert len(faces) == 1, f"expected the one face, found {len(faces)}"
    return faces[0]


def test_every_reason_the_gate_gives_is_exercised() -> None:
    """The cases cover the policy's every limit: a new limit without a case fails here."""
    limits = {"min_size", "min_sharpness", "min_brightness", "max_brightness", "max_yaw",
              "max_roll", "min_detector_score"}
    assert set(QualityPolicy.__dataclass_fields__) == limits
    assert len(CASES) == len(limits)


@pytest.mark.parametrize("name", list(CASES))
def test_a_transformed_photo_gets_exactly_its_reason(
    name: str, faces_dir: Path, pipelines: dict[QualityPolicy, Pipeline]
) -> None:
    case = CASES[name]
    pipeline = pipelines[case.policy]
    photo = Image.open(faces_dir / "people" / f"{case.photo}.jpg")
    clean = only_face(pipeline, photo).quality
    assert clean.reasons == () and clean.acceptable, clean.reasons  # the control passes the gate
    assert not case.past_limit(clean, case.policy)

    bad = only_face(pipeline, case.transform(photo)).quality
    assert len(bad.reasons) == 1 and bad.reasons[0].startswith(case.reason), bad.reasons
    assert not bad.acceptable and case.past_limit(bad, case.policy)
    assert bad.components[case.component] < clean.components[case.component]
    assert bad.score < clean.score


def test_roll_follows_a_real_rotation(
    faces_dir: Path, pipelines: dict[QualityPolicy, Pipeline]
) -> None:
    """Turning the photo by 15/25/35 degrees moves the measured roll by as much (within 5)."""
    pipeline = pipelines[DEFAULT_POLICY]
    photo = Image.open(faces_dir / "people" / f"{AL}.jpg")
    upright = only_face(pipeline, photo).quality.roll
    for degrees in (15, 25, 35):
        measured = only_face(pipeline, rotate(degrees)(photo)).quality.roll
        assert abs((upright - measured) - degrees) < 5, (degrees, upright, measured)
