"""Visage's distances against face_recognition's, on the same faces: the mapping between them.

    .venv/bin/python benchmarks/distances.py [--faces DIR]

face_recognition compares raw dlib descriptors by Euclidean distance (tolerance 0.6); Visage
L2-normalises them first (Euclidean distance between unit vectors, ``sqrt(2 - 2 cos)``; the
shipped threshold 0.3764 holds FMR 1e-3). Raw descriptors have a norm of about 1.4, so the two
differ by that factor. This prints the factor over every pair of ``pairs_dev.txt``, each
threshold translated to the other scale, and the pairs accuracy of both rules.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
from machine import default_faces
from runtime import central_chips

from visage.decision import default_calibration
from visage.eval.protocols import read_lfw_pairs
from visage.models.onnx_runtime import OnnxEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--faces", default=default_faces())
    faces = Path(parser.parse_args().faces)
    pairs = read_lfw_pairs(faces / "pairs_dev.txt", faces / "people")
    photos = sorted({p.a for p in pairs} | {p.b for p in pairs})
    chips, found = central_chips(photos)
    raw = OnnxEmbedder().embed_chips(chips).astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    index = {p.resolve(): i for i, p in enumerate(found)}
    kept = [(index[p.a.resolve()], index[p.b.resolve()], p.same) for p in pairs
            if p.a.resolve() in index and p.b.resolve() in index]  # fmt: skip
    a, b, same = (np.array(x) for x in zip(*kept))
    d_raw = np.linalg.norm(raw[a] - raw[b], axis=1)
    d_unit = np.linalg.norm(unit[a] - unit[b], axis=1)
    ratio = d_raw / d_unit
    threshold = default_calibration(OnnxEmbedder().model_id).threshold
    norms = np.linalg.norm(raw, axis=1)
    fit = float(np.median(ratio))
    print(f"CPU: {platform.processor() or platform.machine()}; {len(kept)} pairs, {len(raw)} faces")
    print(f"raw descriptor norm: mean {norms.mean():.3f} (min {norms.min():.3f}, max {norms.max():.3f})")
    print(f"face_recognition distance / Visage distance: median {fit:.3f}, "
          f"5-95% {np.percentile(ratio, 5):.3f}-{np.percentile(ratio, 95):.3f}")  # fmt: skip
    print(f"Visage {threshold:.4f} ~ face_recognition {threshold * fit:.3f}; "
          f"face_recognition 0.6 ~ Visage {0.6 / fit:.4f}")  # fmt: skip
    for name, dist, cut in (("face_recognition, 0.6", d_raw, 0.6),
                            (f"Visage, {threshold:.4f}", d_unit, threshold)):  # fmt: skip
        match = dist <= cut
        fmr, fnmr = match[~same].mean(), (~match[same]).mean()
        print(f"{name}: accuracy {np.mean(match == same):.4f}, FMR {fmr:.4f}, FNMR {fnmr:.4f}")


if __name__ == "__main__":
    main()
