"""Detectors compared in one run: speed, recall, agreement with HOG, and end-to-end photos/s.

    PYTHONPATH=src .venv/bin/python benchmarks/detectors.py [--faces DIR] [--e2e-photos 100]
                                                           [--fit]

On the shared ``people/`` photos, for ``hog``, ``blazeface`` and ``blazeface-short``:

- detection ms/photo (mean, one photo at a time, decoded beforehand, after a warm-up photo);
- photos with a face (recall: the labelled person is in every photo) and faces found;
- agreement with HOG on the faces both find (best IoU >= 0.3): box IoU, the 5-point
  landmarks' largest difference in pixels, the aligned 150x150 chip's mean absolute pixel
  difference, and the distance between the two L2-normalised embeddings of the same face;
- end to end, file → decode → detect → landmarks → align → embed (``Pipeline.embed``), one
  photo at a time, photos/s on the first ``--e2e-photos`` photos, against face_recognition 1.3.0
  (HOG, its only CPU detector) on the same photos.

``--fit`` also prints the box mapping (centre offset and side, in BlazeFace box widths: medians
over the matched faces) that makes each BlazeFace model's raw boxes HOG-like, as fitted for
:data:`visage.models.blazeface.MODELS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np
from machine import cpu_line, default_faces

from visage import align
from visage.decision import normalize
from visage.imageio import load_image
from visage.models import make_detector, make_embedder, make_landmarker
from visage.models.base import Box, Detection, Detector, Image
from visage.models.blazeface import BlazeFaceDetector, BoxMapping
from visage.pipeline import Pipeline

NAMES = ("hog", "blazeface", "blazeface-short")


def iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def matches(hog: list[Detection], other: list[Detection]) -> list[tuple[Detection, Detection]]:
    """Each HOG face with the other detector's best-overlapping one (IoU >= 0.3)."""
    pairs = []
    for h in hog:
        best = max(other, key=lambda d: iou(h.landmark_rect, d.landmark_rect), default=None)
        if best is not None and iou(h.landmark_rect, best.landmark_rect) >= 0.3:
            pairs.append((h, best))
    return pairs


def timed_detections(det: Detector, images: list[Image]) -> tuple[list[list[Detection]], float]:
    det.detect(images[0])  # warm-up: model loading, conversion on first use
    start = time.perf_counter()
    found = [det.detect(img) for img in images]
    return found, (time.perf_counter() - start) * 1000 / len(images)


def agreement(images: list[Image], hog: list[list[Detection]], other: list[list[Detection]]) -> str:
    landmarker, embedder = make_landmarker(5), make_embedder("onnx")
    ious, marks, chips, dists = [], [], [], []
    for img, h, o in zip(images, hog, other):
        for a, b in matches(h, o):
            ious.append(iou(a.landmark_rect, b.landmark_rect))
            la, lb = landmarker.landmarks(img, [a.landmark_rect, b.landmark_rect])
            ca, cb = align.align_many(img, [la, lb])
            marks.append(float(np.abs(la - lb).max()))
            chips.append(float(np.abs(ca.astype(np.float32) - cb).mean()))
            ea, eb = normalize(embedder.embed_chips(np.stack([ca, cb])))
            dists.append(float(np.linalg.norm(ea - eb)))

    def q(xs: list[float], p: float) -> float:
        return float(np.percentile(xs, p))

    return (
        f"{len(ious)} matched; IoU median {q(ious, 50):.2f}, >=0.7 {np.mean(np.array(ious) >= 0.7):.1%}"
        f"; landmarks px median {q(marks, 50):.1f} p95 {q(marks, 95):.1f}"
        f"; chip |diff| median {q(chips, 50):.2f} p95 {q(chips, 95):.2f}"
        f"; embedding distance median {q(dists, 50):.3f} p95 {q(dists, 95):.3f} max {max(dists):.3f}"
    )


def fitted_mapping(hog: list[list[Detection]], raw: list[list[Detection]]) -> BoxMapping:
    dx, dy, scale = [], [], []
    for h, o in zip(hog, raw):
        for a, b in matches(h, o):
            (hl, ht, hr, hb), (bl, bt, br, bb) = a.landmark_rect, b.landmark_rect
            width = br - bl
            dx.append(((hl + hr) - (bl + br)) / 2 / width)
            dy.append(((ht + hb) - (bt + bb)) / 2 / width)
            scale.append((hr - hl) / width)
    return BoxMapping(
        round(statistics.median(dx), 3),
        round(statistics.median(dy), 3),
        round(statistics.median(scale), 3),
    )


def end_to_end(paths: list[Path]) -> None:
    import face_recognition as fr

    rates = {}
    for name in NAMES:
        pipe = Pipeline(detector=name)
        pipe.embed(pipe.load(paths[0]))
        start = time.perf_counter()
        faces = sum(len(pipe.embed(pipe.load(p))) for p in paths)
        rates[name] = len(paths) / (time.perf_counter() - start)
        print(f"  visage {name:16s} {rates[name]:7.1f} photos/s ({faces} faces)")
    fr.face_encodings(fr.load_image_file(paths[0]))
    start = time.perf_counter()
    faces = 0
    for p in paths:
        img = fr.load_image_file(p)
        faces += len(fr.face_encodings(img, fr.face_locations(img)))
    peer = len(paths) / (time.perf_counter() - start)
    print(f"  face_recognition (hog) {peer:7.1f} photos/s ({faces} faces)")
    for name, rate in rates.items():
        print(
            f"  speed-up {name}: {rate / peer:.1f}x face_recognition, {rate / rates['hog']:.1f}x visage hog"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default=default_faces())
    parser.add_argument("--e2e-photos", type=int, default=100)
    parser.add_argument("--fit", action="store_true", help="print the fitted HOG-like box mappings")
    args = parser.parse_args()
    paths = sorted(Path(args.faces, "people").glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no photos under {args.faces}/people: set VISAGE_FACES")
    print(cpu_line())
    images = [load_image(p) for p in paths]
    found: dict[str, list[list[Detection]]] = {}
    for name in NAMES:
        found[name], ms = timed_detections(make_detector(name), images)
        with_face = sum(bool(f) for f in found[name])
        print(f"\n{name}: {ms:.2f} ms/photo detection; {with_face}/{len(images)} photos with a face,"
              f" {sum(map(len, found[name]))} faces")  # fmt: skip
        if name != "hog":
            print(f"  vs hog: {agreement(images, found['hog'], found[name])}")
    if args.fit:
        for name in NAMES[1:]:
            det = make_detector(name)
            assert isinstance(det, BlazeFaceDetector)
            det.model = dataclasses.replace(det.model, hog_like=BoxMapping(0.0, 0.0, 1.0))
            raw = [det.detect(img) for img in images]
            print(f"fitted {name}: {fitted_mapping(found['hog'], raw)}")
    print(f"\nend to end, one photo at a time, first {args.e2e_photos} photos:")
    end_to_end(paths[: args.e2e_photos])
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
