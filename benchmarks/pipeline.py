"""End-to-end photos/s and per-stage ms: Visage vs face_recognition, same photos, same run.

    .venv/bin/python benchmarks/pipeline.py [--photos 60] [--faces DIR] [--runtime auto|onnx|dlib]

Both use HOG detection with one upsample and dlib's ResNet weights (Visage on the chosen
runtime); the figures are medians over the photos after one warm-up photo (model loading
excluded for both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from visage import align
from visage.imageio import load_image
from visage.pipeline import Pipeline
from visage.quality import assess

Stage = Callable[[], object]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def visage_stages(pipe: Pipeline, path: Path) -> dict[str, float]:
    ms: dict[str, float] = {}
    img, ms["decode"] = timed(lambda: load_image(path))
    dets, ms["detect"] = timed(lambda: pipe.detector.detect(img, upsample=1))
    marks, ms["landmarks"] = timed(lambda: pipe.landmarker.landmarks(img, [d.landmark_rect for d in dets]))
    chips, ms["align"] = timed(lambda: align.align_many(img, marks))
    _, ms["quality"] = timed(lambda: [assess(c, d.box, m, "hog", d.score) for c, d, m in zip(chips, dets, marks)])
    _, ms["embed"] = timed(lambda: pipe.embed_chips(chips))
    ms["faces"] = len(dets)
    return ms


def fr_stages(fr: object, path: Path) -> dict[str, float]:
    ms: dict[str, float] = {}
    img, ms["decode"] = timed(lambda: fr.load_image_file(path))  # type: ignore[attr-defined]
    boxes, ms["detect"] = timed(lambda: fr.face_locations(img))  # type: ignore[attr-defined]
    _, ms["landmarks+embed"] = timed(lambda: fr.face_encodings(img, boxes))  # type: ignore[attr-defined]
    ms["faces"] = len(boxes)
    return ms


def summarise(name: str, rows: list[dict[str, float]]) -> float:
    stages = [k for k in rows[0] if k != "faces"]
    totals = [sum(r[k] for k in stages) for r in rows]
    print(f"\n{name}: {len(rows)} photos, {sum(r['faces'] for r in rows):.0f} faces")
    for k in stages:
        print(f"  {k:16s} median {statistics.median(r[k] for r in rows):8.2f} ms")
    per_photo = statistics.mean(totals)
    print(f"  {'total':16s} mean   {per_photo:8.2f} ms/photo  = {1000 / per_photo:6.2f} photos/s")
    return per_photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=60)
    default_faces = os.environ.get("VISAGE_FACES") or str(Path(__file__).resolve().parents[2] / "shared" / "faces")
    parser.add_argument("--faces", default=default_faces)
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "dlib"])
    args = parser.parse_args()
    paths = sorted(Path(args.faces, "people").glob("*/*.jpg"))[: args.photos]
    if not paths:
        raise SystemExit(f"no photos under {args.faces}/people: set VISAGE_FACES")

    import face_recognition as fr

    pipe = Pipeline(runtime=args.runtime)
    visage_stages(pipe, paths[0]), fr_stages(fr, paths[0])  # warm-up: load models
    ours = [visage_stages(pipe, p) for p in paths]
    theirs = [fr_stages(fr, p) for p in paths]
    v, f = summarise(f"visage ({type(pipe.embedder).__name__})", ours), summarise("face_recognition 1.3.0", theirs)
    print(f"\nspeed-up, visage / face_recognition: {f / v:.2f}x end-to-end")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
