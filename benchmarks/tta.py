"""Mirrored-chip averaging (``--tta``) against the default pipeline, on every shared photo.

    PYTHONPATH=src .venv/bin/python benchmarks/tta.py [--faces DIR] [--pairs 6000]

Both embeddings come from ``benchmarks/open_set.py``'s cached runs over calibration/, people/
and distractors/ (HOG; ``open_set.py measure`` and ``measure --tta`` make them, ~4 min each on 2
cores). The same photos are compared for both (those where both found a face; a distractor
photo that is also a calibration stranger counted once):

- every genuine pair (two photos of one identity) against every impostor pair: EER, FNMR at
  FMR 1e-3 / 1e-4 / 1e-5 (thresholds read off each variant's own impostor distances);
- an LFW-style protocol of ``--pairs`` pairs (half genuine, half impostor, seeded) in 10 folds:
  accuracy with the threshold chosen on the other nine, and the pairs the two variants decide
  differently;
- the cost: ms per face of ``embed_chips`` with and without the mirrored chip, same chips, same
  run.

The open-set figures (FNIR at a 1% FPIR collection, 60 to 1,000 persons) are
``open_set.py measure`` and ``measure --tta``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from machine import cpu_line, default_faces
from open_set import cache_file, embed_all, identity

from visage.align import align_many
from visage.eval.metrics import at_fmr, eer, kfold_accuracy, roc
from visage.eval.open_set import distance_matrix
from visage.pipeline import Pipeline

Floats = npt.NDArray[np.float64]


def shared_photos(faces: Path) -> tuple[list[str], list[npt.NDArray[np.float32]]]:
    """The photos both variants embedded (each photo once), and their two embedding matrices."""
    runs = [dict(zip(*embed_all(faces, cache_file(None, tta), tta))) for tta in (False, True)]
    seen: set[tuple[str, str]] = set()
    paths = []
    for path in sorted(set(runs[0]) & set(runs[1])):
        key = (identity(path), Path(path).name)
        if key not in seen:
            seen.add(key)
            paths.append(path)
    return paths, [np.stack([run[p] for p in paths]) for run in runs]


def pair_distances(
    vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.str_]
) -> tuple[Floats, Floats]:
    """Every genuine and every impostor distance (upper triangle of the distance matrix)."""
    matrix = distance_matrix(vectors, vectors)
    upper = np.triu_indices(len(vectors), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    pooled = matrix[upper]
    return pooled[same], pooled[~same]


def protocol(
    labels: npt.NDArray[np.str_], n_pairs: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """``n_pairs`` pairs, half genuine (drawn from every genuine pair) and half impostor."""
    upper = np.triu_indices(len(labels), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    half = n_pairs // 2
    genuine = rng.choice(np.flatnonzero(same), half, replace=False)
    impostor = rng.choice(np.flatnonzero(~same), half, replace=False)
    chosen = np.concatenate([genuine, impostor])
    return (
        upper[0][chosen],
        upper[1][chosen],
        np.concatenate([np.ones(half, bool), np.zeros(half, bool)]),
    )


def embed_cost(faces: Path, photos: int = 60) -> dict[bool, float]:
    """Median ms per face of ``embed_chips`` on the same aligned chips, interleaved."""
    paths = sorted((faces / "people").glob("*/*.jpg"))[:photos]
    pipes = {tta: Pipeline(tta=tta) for tta in (False, True)}
    chips = []
    for path in paths:
        image = pipes[False].load(path)
        chips += [align_many(image, [f.landmarks])[None, 0] for f in pipes[False].detect(image)]
    for pipe in pipes.values():
        pipe.embed_chips(chips[0])
    ms: dict[bool, list[float]] = {False: [], True: []}
    for chip in chips * 2:
        for tta, pipe in pipes.items():
            start = time.perf_counter()
            pipe.embed_chips(chip)
            ms[tta].append((time.perf_counter() - start) * 1000)
    return {tta: statistics.median(v) for tta, v in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--faces", type=Path, default=Path(default_faces()))
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths, (plain, mirrored) = shared_photos(args.faces)
    labels = np.array([identity(p) for p in paths])
    print(f"{len(paths)} photos of {len(set(labels))} identities embedded by both")
    a, b, same = protocol(labels, args.pairs, np.random.default_rng(args.seed))
    folds = np.arange(len(same)) % 10
    decided = {}
    for name, vectors in (("default", plain), ("--tta", mirrored)):
        genuine, impostor = pair_distances(vectors, labels)
        curve = roc(genuine, impostor)
        points = [at_fmr(curve, f) for f in (1e-3, 1e-4, 1e-5)]
        dist = np.linalg.norm(vectors[a] - vectors[b], axis=1)
        folded = kfold_accuracy(dist, same, folds)
        decided[name] = dist <= np.array(folded.thresholds)[folds]
        print(f"\n{name}: {len(genuine):,} genuine, {len(impostor):,} impostor pairs")
        print(
            f"  EER {eer(curve).rate:.4f}; FNMR at FMR "
            + ", ".join(f"{p.target_fmr:g}: {p.fnmr:.4f} (at {p.threshold:.4f})" for p in points)
        )
        print(
            f"  {len(same)} pairs, 10 folds: accuracy {folded.mean:.4f} +- {folded.std:.4f} "
            f"(standard error {folded.standard_error:.4f})"
        )
    flips = decided["default"] != decided["--tta"]
    fixed = flips & (decided["--tta"] == same)
    print(
        f"\npairs decided differently: {int(flips.sum())}; --tta right on {int(fixed.sum())}, "
        f"wrong on {int((flips & ~fixed).sum())}"
    )
    cost = embed_cost(args.faces)
    print(f"embed_chips per face, median: default {cost[False]:.2f} ms, --tta {cost[True]:.2f} ms")
    print(cpu_line())


if __name__ == "__main__":
    main()
