"""End-to-end photos/s and per-stage ms: Visage vs face_recognition, same photos, same run.

    .venv/bin/python benchmarks/pipeline.py [--photos 60] [--faces DIR] [--runtime auto|onnx|dlib]
                                            [--detector hog|cnn|blazeface|blazeface-short]

Both use the same detector (one upsample; face_recognition has no BlazeFace, so it runs HOG
then) and dlib's ResNet weights (Visage on the chosen runtime). Per-stage figures are medians over the photos, one photo at a time, after one warm-up
photo (model loading excluded for both). Batch throughput is Visage's ``embed_many`` (faces of 16
photos embedded per call; one process, then one per core) against face_recognition's per-photo
loop (its API has no batch or parallel form for HOG). With a BlazeFace detector it also times
the network on one window (a 250x250 photo) with one thread per core against one thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from machine import cpu_line, default_faces

from visage import align
from visage.imageio import load_image
from visage.models import DETECTORS
from visage.models.blazeface import BlazeFaceDetector
from visage.pipeline import Pipeline
from visage.quality import assess

Stage = Callable[[], object]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def visage_stages(pipe: Pipeline, path: Path) -> dict[str, float]:
    ms: dict[str, float] = {}
    name = pipe.config.detector
    img, ms["decode"] = timed(lambda: load_image(path))
    dets, ms["detect"] = timed(lambda: pipe.detector.detect(img, upsample=1))
    marks, ms["landmarks"] = timed(lambda: pipe.landmarker.landmarks(img, [d.landmark_rect for d in dets]))
    chips, ms["align"] = timed(lambda: align.align_many(img, marks))
    _, ms["quality"] = timed(lambda: [assess(c, d.box, m, name, d.score) for c, d, m in zip(chips, dets, marks)])
    _, ms["embed"] = timed(lambda: pipe.embed_chips(chips))
    ms["faces"] = len(dets)
    return ms


def fr_stages(fr: object, path: Path, detector: str) -> dict[str, float]:
    ms: dict[str, float] = {}
    img, ms["decode"] = timed(lambda: fr.load_image_file(path))  # type: ignore[attr-defined]
    boxes, ms["detect"] = timed(lambda: fr.face_locations(img, model=detector))  # type: ignore[attr-defined]
    _, ms["landmarks+embed"] = timed(lambda: fr.face_encodings(img, boxes))  # type: ignore[attr-defined]
    ms["faces"] = len(boxes)
    return ms


def single_window_threads(detector: BlazeFaceDetector, paths: list[Path]) -> None:
    """BlazeFace's network call on one photo (one window), interleaved on the same inputs: the
    session of the configured threads (one per core: what single windows ran on before issue 17)
    against the one-thread session they run on now (:meth:`BlazeFaceDetector.session_for`)."""
    inputs = [{"image": detector._input(load_image(p))[0][None]} for p in paths]
    sessions = {"one per core": detector.session, "1 thread": detector.session_for(1)}
    ms: dict[str, list[float]] = {name: [] for name in sessions}
    for feed in inputs * 3:
        for name, session in sessions.items():
            ms[name].append(timed(partial(session.run, None, feed))[1])
    cores, one = (statistics.median(v) for v in ms.values())
    print(f"\nBlazeFace single window, median of {len(ms['1 thread'])} calls: one thread per core "
          f"{cores:.2f} ms, 1 thread {one:.2f} ms ({cores / one:.2f}x)")


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
    parser.add_argument("--faces", default=default_faces())
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "dlib"])
    parser.add_argument("--detector", default="hog", choices=list(DETECTORS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the second batched run (default: one per core)")
    parser.add_argument("--batch-photos", type=int, default=160,
                        help="photos for the batched runs (more amortise the pool's start-up)")
    args = parser.parse_args()
    every = sorted(Path(args.faces, "people").glob("*/*.jpg"))
    paths, batch_paths = every[: args.photos], every[: args.batch_photos]
    if not paths:
        raise SystemExit(f"no photos under {args.faces}/people: set VISAGE_FACES")

    import face_recognition as fr

    fr_detector = args.detector if args.detector in ("hog", "cnn") else "hog"
    pipe = Pipeline(runtime=args.runtime, detector=args.detector)
    visage_stages(pipe, paths[0]), fr_stages(fr, paths[0], fr_detector)  # warm-up: load models
    ours = [visage_stages(pipe, p) for p in paths]
    theirs = [fr_stages(fr, p, fr_detector) for p in paths]
    label = f"visage ({type(pipe.embedder).__name__}, {pipe.detector.name})"
    v, f = summarise(label, ours), summarise(f"face_recognition 1.3.0 ({fr_detector})", theirs)
    print(f"\nspeed-up, visage / face_recognition: {f / v:.2f}x end-to-end, one photo at a time")
    if isinstance(pipe.detector, BlazeFaceDetector):
        single_window_threads(pipe.detector, paths)
    for workers in (1, args.workers):
        start = time.perf_counter()
        results = list(pipe.embed_many(batch_paths, workers=workers))
        batch_ms = (time.perf_counter() - start) * 1000 / len(batch_paths)
        print(f"visage embed_many (batched, {workers} process(es), {len(batch_paths)} photos, pool "
              f"start-up included): {batch_ms:.2f} ms/photo = {1000 / batch_ms:.2f} photos/s, "
              f"{sum(len(r.faces) for r in results)} faces; {f / batch_ms:.2f}x face_recognition")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(cpu_line())


if __name__ == "__main__":
    main()
