"""Group faces by person without a gallery: Chinese whispers over a size-aware threshold.

Faces are nodes; two faces are joined when their distance is within the edge threshold. A
fixed per-comparison threshold (FMR 1e-3) gives every face about n/1000 false edges, which
past a few thousand faces merge different people (BCubed precision 0.52 on 3,877 faces).
So by default the threshold follows the set's size by the gallery's open-set rule
(:func:`visage.decision.open_set_threshold`): each face has at most an :data:`EDGE_STRAY`
chance of any edge to someone else among the other ``n - 1`` faces. Measured on the shared
photos (``benchmarks/grouping.py``, docs/accuracy.md): BCubed F 0.950 on 3,877 faces of 2,521
people (fixed threshold: 0.681) and 0.980 on 521 faces (fixed: 0.963). Chinese whispers (Biemann 2006, what dlib's
``chinese_whispers_clustering`` runs) then lets each node take the label most common among
its neighbours until no label changes. Unlike connected components, a single false match does
not merge two people's groups, because one edge rarely outvotes a whole group. Deterministic:
nodes are visited in an order drawn from a fixed seed, ties go to the smaller label.

Cost: a faiss range search over all pairs (no ``(n, n)`` matrix: memory follows the edges) and a
few passes over the edges (docs/accuracy.md has the figures at 100k faces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .decision import (
    OpenSetPoint,
    default_calibration,
    default_open_set,
    normalize,
    open_set_threshold,
)

EDGE_STRAY = 0.15
"""Largest chance that a face has an edge to another person's face in the set: 0.15 gave the
best BCubed F on the shared photos (0.945 at 0.2, 0.950 at 0.15, 0.946 at 0.1, 0.896 at 0.01)."""


@dataclass(frozen=True)
class Grouping:
    """Groups of row indices (largest first, each sorted); ``messy``: rows that joined none."""

    groups: list[list[int]]
    messy: list[int]

    def labels(self) -> list[int]:
        """A group number per row; each messy row is a group of its own (for scoring)."""
        n = sum(map(len, self.groups)) + len(self.messy)
        out = [-1] * n
        for number, rows in enumerate(self.groups):
            for r in rows:
                out[r] = number
        for offset, r in enumerate(self.messy):
            out[r] = len(self.groups) + offset
        return out


def _neighbours(vecs: npt.NDArray[np.float32], threshold: float) -> list[npt.NDArray[np.int64]]:
    """For each row, the other rows within ``threshold``: a faiss range search on inner
    products (distance ``d`` is cosine ``1 - d^2/2``), so memory follows the edges, not n^2."""
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    limits, _, found = index.range_search(vecs, float(1.0 - threshold**2 / 2.0) - 1e-6)
    return [
        row[row != i]
        for i, row in enumerate(np.split(found.astype(np.int64), limits[1:-1]))
    ]


def chinese_whispers(
    vectors: npt.ArrayLike, threshold: float, *, max_iterations: int = 100, seed: int = 0
) -> npt.NDArray[np.int64]:
    """A label per row of ``vectors (n, d)``; rows within ``threshold`` tend to share one."""
    vecs = normalize(np.asarray(vectors, dtype=np.float32))
    n = len(vecs)
    labels = np.arange(n, dtype=np.int64)
    if n < 2:
        return labels
    neighbours = _neighbours(vecs, threshold)
    rng = np.random.default_rng(seed)
    for _ in range(max_iterations):
        changed = False
        for node in rng.permutation(n):
            near = neighbours[node]
            if len(near) == 0:
                continue
            values, counts = np.unique(labels[near], return_counts=True)
            best = int(values[np.argmax(counts)])  # np.unique sorts: ties go to the smaller label
            if best != labels[node]:
                labels[node] = best
                changed = True
        if not changed:
            break
    return labels


def edge_threshold(n: int, model_id: str, *, stray: float = EDGE_STRAY) -> OpenSetPoint:
    """The edge threshold for grouping ``n`` faces of ``model_id``: each face has at most a
    ``stray`` chance of an edge to another person among the other ``n - 1`` (the open-set rule
    with the set as the gallery); a model with no open-set table keeps its 1:1 threshold."""
    others = max(n - 1, 1)
    table = default_open_set(model_id)
    if table is None:
        cal = default_calibration(model_id)
        return OpenSetPoint(stray, others, others, cal.threshold, False, "fixed")
    return open_set_threshold(table, stray, others, others)


def group(vectors: npt.ArrayLike, threshold: float) -> Grouping:
    """Faces grouped by person at ``threshold`` (see :func:`edge_threshold` for the default
    rule); singletons (faces like no other) go to ``messy``."""
    labels = chinese_whispers(vectors, threshold)
    members: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(row)
    groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))
    messy = sorted(m[0] for m in members.values() if len(m) == 1)
    return Grouping(groups, messy)
