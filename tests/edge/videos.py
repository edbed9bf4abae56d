"""Test videos made from the labelled photos: people entering, moving, growing and leaving.

Each person is a crop of one photo pasted onto a plain background along a straight path, scaled
linearly between two sizes, present for a span of frames. Written with OpenCV (MJPG in AVI,
which every OpenCV build can read back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CROP = 170  # side of the centred square cut from a 250x250 LFW photo (the face sits inside)


@dataclass(frozen=True)
class Walk:
    """One person's appearance: photo, frames ``[start, end)``, path and scale from → to; over
    the first ``fade_in`` and last ``fade_out`` frames the crop blends in / out (a cross-fade)."""

    photo: Path
    start: int
    end: int
    xy_from: tuple[float, float]
    xy_to: tuple[float, float]
    scale_from: float = 1.0
    scale_to: float = 1.0
    fade_in: int = 0
    fade_out: int = 0

    def opacity(self, frame: int) -> float:
        rise = (frame - self.start + 1) / (self.fade_in + 1)
        fall = (self.end - frame) / (self.fade_out + 1)
        return min(1.0, rise, fall)

    def placement(self, frame: int) -> tuple[int, int, int] | None:
        """Top-left corner and side of the pasted crop at ``frame``, or ``None`` when absent."""
        if not self.start <= frame < self.end:
            return None
        t = (frame - self.start) / max(self.end - self.start - 1, 1)
        x = self.xy_from[0] + t * (self.xy_to[0] - self.xy_from[0])
        y = self.xy_from[1] + t * (self.xy_to[1] - self.xy_from[1])
        side = int(CROP * (self.scale_from + t * (self.scale_to - self.scale_from)))
        return int(x), int(y), side


def crop(photo: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    h, w = rgb.shape[:2]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    return rgb[top : top + CROP, left : left + CROP]


def make_video(
    path: Path,
    walks: list[Walk],
    *,
    frames: int,
    size: tuple[int, int] = (640, 360),
    fps: float = 10.0,
    background: Callable[[int], tuple[int, int, int]] = lambda frame: (118, 124, 130),
) -> Path:
    """Write the video; pasted crops are clipped at the borders (people walk in and out).
    ``background`` gives each frame's plain colour (a change of colour is a shot cut)."""
    width, height = size
    crops = {w.photo: crop(w.photo) for w in walks}
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG"
    for f in range(frames):
        canvas = np.full((height, width, 3), background(f), np.uint8)
        for walk in walks:
            place = walk.placement(f)
            if place is None:
                continue
            x, y, side = place
            tile = cv2.resize(crops[walk.photo], (side, side), interpolation=cv2.INTER_AREA)
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + side, width), min(y + side, height)
            if x1 > x0 and y1 > y0:
                alpha = walk.opacity(f)
                part = tile[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32)
                under = canvas[y0:y1, x0:x1].astype(np.float32)
                canvas[y0:y1, x0:x1] = (alpha * part + (1 - alpha) * under).astype(np.uint8)
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def two_people(
    path: Path,
    photo_a: Path,
    photo_b: Path,
    *,
    size: tuple[int, int] = (640, 360),
    frames: int = 40,
    fps: float = 10.0,
) -> Path:
    """A enters left and walks right growing; B enters right while A is in view, walks left
    shrinking; each leaves before the end. Two tracks, overlapping in time."""
    w, h = size
    third = frames // 3
    walks = [
        Walk(photo_a, 0, 2 * third, (-40, h * 0.2), (w * 0.45, h * 0.1), 0.95, 1.25),
        Walk(photo_b, third, frames - 2, (w - 150, h * 0.25), (w * 0.55, h * 0.15), 1.2, 0.95),
    ]
    return make_video(path, walks, frames=frames, size=size, fps=fps)
