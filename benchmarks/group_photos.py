"""Recall by face size and false positives on synthetic 4000x3000 group photos, per detector.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/group_photos.py [--photos 4] [--cnn]

Each photo is a smooth random background with 48 faces from the shared ``people/`` photos
pasted on a grid of 500x500 cells: the labelled face (HOG's box nearest the centre) with 30%
context, scaled so its box is 24 to 300 pixels wide, a third of them blurred (Gaussian,
sigma 1.5) and a third rotated by up to 15 degrees. A face is found when a detection overlaps
its box by IoU >= 0.3; a detection overlapping none is a false positive. Detection runs as the
pipeline runs it (``Pipeline._detections``, upsample 1): HOG and MMOD on the photo shrunk to
2048 pixels a side, BlazeFace on the whole photo with tiles (and, for contrast, without).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_line, default_faces

from visage.imageio import load_image
from visage.models import make_detector
from visage.models.base import Box, Image
from visage.pipeline import Pipeline

SIZES = (24, 32, 40, 56, 80, 112, 160, 224, 300)
CELL, COLS, ROWS = 500, 8, 6


def iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def sources(faces: Path) -> list[tuple[Image, Box]]:
    """Shared photos with the HOG box nearest their centre (photos HOG finds nothing in skipped)."""
    hog = make_detector("hog")
    out = []
    for path in sorted(Path(faces, "people").glob("*/*.jpg")):
        image = load_image(path)
        found = hog.detect(image)
        if found:
            h, w = image.shape[:2]
            best = min(
                found,
                key=lambda d: abs(sum(d.box[::2]) / 2 - w / 2) + abs(sum(d.box[1::2]) / 2 - h / 2),
            )
            out.append((image, best.box))
    return out


def background(rng: np.random.Generator) -> Image:
    coarse = rng.uniform(40, 215, (6, 8, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (COLS * CELL, ROWS * CELL), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, smooth.shape).astype(np.float32)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def group_photo(pool: list[tuple[Image, Box]], rng: np.random.Generator) -> tuple[Image, list[Box]]:
    canvas, truth = background(rng), []
    for cell in range(COLS * ROWS):
        image, (left, top, right, bottom) = pool[rng.integers(len(pool))]
        size = SIZES[cell % len(SIZES)]
        side = right - left
        pad = round(0.3 * side)
        crop = image[max(0, top - pad) : bottom + pad, max(0, left - pad) : right + pad]
        ox, oy = left - max(0, left - pad), top - max(0, top - pad)  # face box inside the crop
        scale = size / side
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if cell % 3 == 1:
            crop = cv2.GaussianBlur(crop, (0, 0), 1.5)
        elif cell % 3 == 2:
            matrix = cv2.getRotationMatrix2D(
                (crop.shape[1] / 2, crop.shape[0] / 2), rng.uniform(-15, 15), 1
            )
            crop = cv2.warpAffine(crop, matrix, crop.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
        ch, cw = crop.shape[:2]
        x = (cell % COLS) * CELL + int(rng.integers(0, CELL - cw + 1))
        y = (cell // COLS) * CELL + int(rng.integers(0, CELL - ch + 1))
        canvas[y : y + ch, x : x + cw] = crop
        fx, fy = x + round(ox * scale), y + round(oy * scale)
        truth.append((fx, fy, fx + size, fy + size))
    return canvas, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default=default_faces())
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--cnn", action="store_true", help="also MMOD (about 5 s a photo)")
    args = parser.parse_args()
    print(cpu_line())
    rng = np.random.default_rng(17)
    pool = sources(Path(args.faces))
    photos = [group_photo(pool, rng) for _ in range(args.photos)]
    runs = [("hog", 1), ("blazeface", 1), ("blazeface", 0), ("blazeface-short", 1)]
    runs += [("cnn", 1)] if args.cnn else []
    print(
        f"{args.photos} photos of {COLS * CELL}x{ROWS * CELL}, {COLS * ROWS} faces each; recall by face width (px):"
    )
    print(
        f"{'detector':28s} {'ms/photo':>9s} "
        + " ".join(f"{s:>5d}" for s in SIZES)
        + "  >=40px  FP/photo"
    )
    for name, upsample in runs:
        pipe = Pipeline(detector=name, upsample=upsample)
        pipe._detections(photos[0][0][:500, :500])  # warm-up: load (and convert) the model
        hits = {s: 0 for s in SIZES}
        counts = {s: 0 for s in SIZES}
        false_positives, elapsed = 0, 0.0
        for canvas, truth in photos:
            start = time.perf_counter()
            found = pipe._detections(canvas)
            elapsed += time.perf_counter() - start
            matched = set()
            for k, box in enumerate(truth):
                size = SIZES[k % len(SIZES)]
                counts[size] += 1
                best = max(range(len(found)), key=lambda j: iou(box, found[j].box), default=None)
                if best is not None and iou(box, found[best].box) >= 0.3:
                    hits[size] += 1
                    matched.add(best)
            false_positives += sum(
                1
                for j, d in enumerate(found)
                if j not in matched and max(iou(d.box, t) for t in truth) < 0.3
            )
        big = [s for s in SIZES if s >= 40]
        recall_big = sum(hits[s] for s in big) / sum(counts[s] for s in big)
        label = f"{name} (upsample {upsample})"
        print(f"{label:28s} {elapsed * 1000 / len(photos):9.0f} "
              + " ".join(f"{hits[s] / counts[s]:5.2f}" for s in SIZES)
              + f"  {recall_big:6.1%}  {false_positives / len(photos):8.1f}")  # fmt: skip
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
