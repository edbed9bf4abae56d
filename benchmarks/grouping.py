"""Grouping by person: the size-aware edge threshold against the fixed 1:1 threshold.

    .venv/bin/python benchmarks/grouping.py [--faces DIR] [--cache FILE]

Embeds every photo of ``calibration/``, ``people/`` and ``distractors/`` once (the cache is
shared with benchmarks/open_set.py), drops repeated photos (73 distractors are also in
calibration/strangers), and groups the whole set and the people/ + distractors/ part with
Chinese whispers at each rule, printing BCubed precision, recall and F, and the time. Then the
incremental rows: the first half grouped alone, the second half added with
:func:`visage.grouping.extend` (the time is the extend step's), for halves in path order and
for interleaved halves (every other face, so each person's faces arrive in both).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
from machine import default_faces
from open_set import embed_all, identity

from visage.decision import default_calibration, normalize
from visage.eval.metrics import bcubed
from visage.grouping import EDGE_STRAY, edge_threshold, extend, group

FIXED = default_calibration("dlib_resnet_v1").threshold
"""The fixed 1:1 threshold (FMR 1e-3, 0.3764) the size-aware rule is measured against."""


def synthetic(n: int, rule: str) -> None:
    """Time and peak memory of grouping ``n`` clustered unit vectors (5 faces a person, ~0.2
    apart within a person, ~1.4 between people) at ``rule`` (``size-aware`` or ``fixed``). The
    clusters are far apart, so both rules group them perfectly: this measures cost, and the
    photo sets measure accuracy. Run once per size and rule (peak RSS is the process's)."""
    rng = np.random.default_rng(0)
    people = n // 5
    centres = normalize(rng.standard_normal((people, 128)).astype(np.float32))
    faces = normalize(np.repeat(centres, 5, axis=0)
                      + 0.012 * rng.standard_normal((people * 5, 128)).astype(np.float32))  # fmt: skip
    truth = [str(i) for i in np.repeat(np.arange(people), 5)]
    cut = edge_threshold(len(faces), "dlib_resnet_v1").threshold if rule == "size-aware" else FIXED
    start = time.perf_counter()
    score = bcubed(group(faces, cut).labels(), truth)
    p, r, f = score.precision, score.recall, score.f
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(faces)} synthetic faces, {rule} threshold {cut:.4f}: {took:.1f} s, peak RSS "
          f"{peak:.0f} MB, BCubed P {p:.3f} R {r:.3f} F {f:.3f}; CPU {platform.machine()}, "
          f"{os.cpu_count()} cores")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--faces", type=Path, default=Path(default_faces()))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/visage-open-set-embeddings.npz"))
    parser.add_argument("--synthetic", type=int, default=0,
                        help="instead: time N synthetic faces, 5 per person (e.g. 100000)")  # fmt: skip
    parser.add_argument("--rule", choices=("size-aware", "fixed"), default="size-aware",
                        help="with --synthetic: the edge rule to time")  # fmt: skip
    args = parser.parse_args()
    if args.synthetic:
        synthetic(args.synthetic, args.rule)
        return
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
        rules = (("fixed 1:1 (FMR 1e-3)", FIXED),
                 ("size-aware", edge_threshold(len(sub), "dlib_resnet_v1").threshold))  # fmt: skip
        for rule, cut in rules:
            start = time.perf_counter()
            score = bcubed(group(sub, cut).labels(), who)
            p, r, f = score.precision, score.recall, score.f
            took = time.perf_counter() - start
            print(f"| {label} | {len(sub)} | {len(set(who))} | {rule} | {cut:.4f} | {p:.3f} | "
                  f"{r:.3f} | {f:.3f} | {took:.1f} |")  # fmt: skip
        for split, first in (("halves in turn", np.arange(len(sub)) < len(sub) // 2),
                             ("interleaved halves", np.arange(len(sub)) % 2 == 0)):  # fmt: skip
            incremental(label, sub, who, first, split)


def incremental(label: str, sub: np.ndarray, who: list[str], first: np.ndarray, split: str) -> None:
    """One row: the ``first`` rows grouped alone, then the others added by :func:`extend`."""
    cut = edge_threshold(len(sub), "dlib_resnet_v1").threshold
    start_cut = edge_threshold(int(first.sum()), "dlib_resnet_v1").threshold
    before = group(sub[first], start_cut)
    start = time.perf_counter()
    grown = extend(sub[first], before, sub[~first], cut)
    took = time.perf_counter() - start
    order = [who[i] for i in np.flatnonzero(first)] + [who[i] for i in np.flatnonzero(~first)]
    score = bcubed(grown.labels(), order)
    print(f"| {label} | {len(sub)} | {len(set(who))} | size-aware, incremental ({split}) | "
          f"{cut:.4f} | {score.precision:.3f} | {score.recall:.3f} | {score.f:.3f} | {took:.1f} |")


if __name__ == "__main__":
    main()
