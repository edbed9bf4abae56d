"""Grouping by person: the size-aware edge threshold against the fixed 1:1 threshold.

    .venv/bin/python benchmarks/grouping.py [--faces DIR] [--cache FILE]

Embeds every photo of ``calibration/``, ``people/`` and ``distractors/`` once (the cache is
shared with benchmarks/open_set.py), drops repeated photos (73 distractors are also in
calibration/strangers), and groups the whole set and the people/ + distractors/ part with
Chinese whispers at each rule, printing BCubed precision, recall and F, and the time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
from open_set import embed_all, identity

from visage.decision import normalize
from visage.grouping import EDGE_STRAY, edge_threshold, group


def bcubed(pred: list[int], truth: list[str]) -> tuple[float, float, float]:
    both, sizes, people = Counter(zip(pred, truth)), Counter(pred), Counter(truth)
    p = sum(both[(a, t)] / sizes[a] for a, t in zip(pred, truth)) / len(truth)
    r = sum(both[(a, t)] / people[t] for a, t in zip(pred, truth)) / len(truth)
    return p, r, 2 * p * r / (p + r)


def labels_of(vectors: np.ndarray, threshold: float) -> list[int]:
    found = group(vectors, threshold)
    pred = [-1] * len(vectors)
    for number, rows in enumerate(found.groups):
        for r in rows:
            pred[r] = number
    for j, r in enumerate(found.messy):
        pred[r] = len(found.groups) + j
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default_faces = os.environ.get("VISAGE_FACES") or str(
        Path(__file__).resolve().parents[2] / "shared" / "faces"
    )
    parser.add_argument("--faces", type=Path, default=Path(default_faces))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/visage-open-set-embeddings.npz"))
    args = parser.parse_args()
    paths, vectors = embed_all(args.faces, args.cache)
    seen: set[str] = set()
    keep = [i for i, p in enumerate(paths) if not (Path(p).name in seen or seen.add(Path(p).name))]
    names = [paths[i] for i in keep]
    unit = normalize(vectors[keep])
    truth = [identity(p) for p in names]
    print(f"CPU: {platform.processor() or platform.machine()}; edge stray rate {EDGE_STRAY}")
    print("| set | faces | people | rule | threshold | precision | recall | F | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    shared = [i for i, p in enumerate(names) if not p.startswith("calibration")]
    for label, rows in (("people/ + distractors/", shared), ("all", list(range(len(names))))):
        sub, who = unit[rows], [truth[i] for i in rows]
        rules = (("fixed 1:1 (FMR 1e-3)", 0.3764),
                 ("size-aware", edge_threshold(len(sub), "dlib_resnet_v1").threshold))  # fmt: skip
        for rule, cut in rules:
            start = time.perf_counter()
            p, r, f = bcubed(labels_of(sub, cut), who)
            took = time.perf_counter() - start
            print(f"| {label} | {len(sub)} | {len(set(who))} | {rule} | {cut:.4f} | {p:.3f} | "
                  f"{r:.3f} | {f:.3f} | {took:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
