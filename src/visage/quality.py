"""A 0..1 quality score per face, with reasons, from things that can be measured.

Measures: face size in pixels, sharpness (variance of the Laplacian of the aligned chip), exposure
(mean brightness and clipped fraction of the chip's centre), yaw and roll estimated from the five
landmarks, and the detector's score. Each becomes a 0..1 sub-score; the overall score is their
geometric mean, so one bad measure pulls it down. A measure past its policy limit adds a reason
("too small: 32 px < 40 px") and makes the face unacceptable for enrollment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .models.base import Box, Image


@dataclass(frozen=True)
class QualityPolicy:
    """Limits below (or above) which a face is refused. Defaults are tuned on LFW-like photos.

    See docs/quality.md for the distributions they were read from.
    """

    min_size: float = 40.0  # face box side, pixels
    min_sharpness: float = 6.0  # variance of the Laplacian on the 150 px grey chip
    min_brightness: float = 40.0  # mean grey level of the chip centre, 0..255
    max_brightness: float = 220.0
    max_yaw: float = 40.0  # degrees, estimated
    max_roll: float = 45.0  # degrees
    min_detector_score: float = 0.0  # on the 0..1 scale of :func:`detector_confidence`


DEFAULT_POLICY = QualityPolicy()


@dataclass(frozen=True)
class Quality:
    """Quality of one face: overall ``score`` (0..1), ``reasons`` it is unacceptable, the measures."""

    score: float
    reasons: tuple[str, ...]
    size: float
    sharpness: float
    brightness: float
    yaw: float
    roll: float
    detector_score: float
    components: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def acceptable(self) -> bool:
        """True when no measure is past its policy limit."""
        return not self.reasons


def detector_confidence(detector: str, score: float) -> float:
    """Map a detector's raw score to 0..1 (HOG: SVM margin, ~2 is sure; MMOD: ~1 is sure)."""
    full = 2.0 if detector == "hog" else 1.0
    return float(min(max(score / full, 0.0), 1.0))


def _laplacian_variance(grey: npt.NDArray[np.float64]) -> float:
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(lap.var())


def pose_from_landmarks(landmarks: npt.NDArray[np.float32]) -> tuple[float, float]:
    """(yaw, roll) in degrees from dlib's 5 points (eye corners 0-3, nose base 4).

    Roll is the eye line's angle. Yaw is estimated from how far the nose base sits from the
    midpoint of the eyes, relative to the eye distance, in the face's own (de-rolled) frame:
    a frontal face has the nose centred; at ~60 degrees it reaches the far eye.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    right_eye, left_eye, nose = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0), pts[4]
    eye_vec = right_eye - left_eye
    iod = float(np.hypot(*eye_vec))
    if iod < 1e-6:
        return 0.0, 0.0
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    axis = eye_vec / iod
    offset = float(np.dot(nose - (right_eye + left_eye) / 2.0, axis)) / iod
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * offset))))
    return yaw, roll


def _ramp(value: float, bad: float, good: float) -> float:
    """0 at ``bad``, 1 at ``good``, linear between (either order)."""
    if good == bad:
        return 1.0
    return float(min(max((value - bad) / (good - bad), 0.0), 1.0))


def assess(
    chip: Image,
    box: Box,
    landmarks: npt.NDArray[np.float32],
    detector: str,
    detector_score: float,
    policy: QualityPolicy = DEFAULT_POLICY,
) -> Quality:
    """Measure one face from its aligned chip, box, landmarks and detector score."""
    size = float(min(box[2] - box[0], box[3] - box[1]))
    grey = chip.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    sharpness = _laplacian_variance(grey)
    centre = grey[37:113, 37:113]
    brightness = float(centre.mean())
    yaw, roll = pose_from_landmarks(landmarks)
    confidence = detector_confidence(detector, detector_score)

    components = {
        "size": _ramp(size, policy.min_size * 0.5, policy.min_size * 2.5),
        "sharpness": _ramp(sharpness, policy.min_sharpness * 0.5, policy.min_sharpness * 4),
        "exposure": min(
            _ramp(brightness, policy.min_brightness * 0.5, policy.min_brightness * 2),
            _ramp(brightness, 255.0, policy.max_brightness - 40.0),
        ),
        "pose": _ramp(abs(yaw), policy.max_yaw * 1.5, 0.0) * _ramp(abs(roll), policy.max_roll * 2, 0.0),
        "detector": 0.5 + 0.5 * confidence,
    }
    score = float(np.prod([max(v, 1e-3) for v in components.values()]) ** (1 / len(components)))

    reasons: list[str] = []
    if size < policy.min_size:
        reasons.append(f"too small: {size:.0f} px < {policy.min_size:.0f} px")
    if sharpness < policy.min_sharpness:
        reasons.append(f"blurred: sharpness {sharpness:.1f} < {policy.min_sharpness:.1f}")
    if brightness < policy.min_brightness:
        reasons.append(f"too dark: brightness {brightness:.0f} < {policy.min_brightness:.0f}")
    if brightness > policy.max_brightness:
        reasons.append(f"overexposed: brightness {brightness:.0f} > {policy.max_brightness:.0f}")
    if abs(yaw) > policy.max_yaw:
        reasons.append(f"turned away: yaw {yaw:+.0f} deg beyond {policy.max_yaw:.0f}")
    if abs(roll) > policy.max_roll:
        reasons.append(f"tilted: roll {roll:+.0f} deg beyond {policy.max_roll:.0f}")
    if confidence < policy.min_detector_score:
        reasons.append(f"uncertain detection: {confidence:.2f} < {policy.min_detector_score:.2f}")
    return Quality(
        score=score,
        reasons=tuple(reasons),
        size=size,
        sharpness=sharpness,
        brightness=brightness,
        yaw=yaw,
        roll=roll,
        detector_score=detector_score,
        components=components,
    )
