"""Group faces by person without a gallery: Chinese whispers over a size-aware threshold.

Faces are nodes; two faces are joined when their distance is within the edge threshold. A
fixed per-comparison threshold (FMR 1e-3) gives every face about n/1000 false edges, which
past a few thousand faces merge different people (BCubed precision 0.52 on 3,877 faces).
So by default the threshold follows the set's size by the gallery's open-set rule
(:func:`visage.decision.open_set_threshold`): each face has at most an :data:`EDGE_STRAY`
chance of any edge to someone else among the other ``n - 1`` faces. Then a hub correction
(:data:`HUB_WEIGHT`) drops an edge between faces that are close to everyone unless they are
closer still: it removed ~90% of the false edges and ~6% of the true ones on the shared photos.
Chinese whispers (Biemann 2006, what dlib's ``chinese_whispers_clustering`` runs) then lets
each node take the label most common among its neighbours until no label changes. Unlike
connected components, a single false match does not merge two people's groups, because one
edge rarely outvotes a whole group. Deterministic: nodes are visited in an order drawn from a
fixed seed, ties go to the smaller label. Measured on the shared photos
(``benchmarks/grouping.py``, docs/accuracy.md): BCubed F 0.964 on 3,877 faces of 2,521 people
(without the hub correction 0.950; fixed threshold 0.681) and 0.990 on 521 faces.

Each grouping states the precision to expect of it (:func:`expected_precision`): from the
calibrated impostor distribution, each face has ``(n - 1) x FMR(threshold)`` false edges on
average, the share :data:`HUB_SURVIVAL` of them survives the hub correction, and a grouped face
held in its group by ``k`` edges is counted wrongly joined with chance ``min(1, that / k)``.

Cost: a faiss range search over all pairs (no ``(n, n)`` matrix: memory follows the edges), a
kNN search for the hub levels (``n x 128`` cosines) and a few passes over the edges: 100,000
faces in 28 s and 680 MB on 2 cores (docs/accuracy.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .decision import (
    OpenSetPoint,
    default_calibration,
    default_open_set,
    normalize,
    open_set_threshold,
)

EDGE_STRAY = 0.3
"""Largest chance that a face has an edge to another person's face in the set, before the hub
correction prunes some (:data:`HUB_WEIGHT`). Chosen with it on calibration/ alone (3,356 faces,
BCubed F 0.967 / 0.968 / 0.961 at 0.2 / 0.3 / 0.4); without the correction 0.15 was best."""

HUB_NEIGHBOURS = 20
"""A face's *level* is the mean cosine of its 20 nearest faces beyond the edge threshold, i.e.
its nearest other people: high for a hub, a face (blurred, small, frontal-average) close to
everyone. Faces within the threshold are left out so a person with many photos is not taken for
a hub. On calibration/ 10 / 20 / 40 gave F 0.967 / 0.968 / 0.967."""

HUB_SEARCH = 128
"""Nearest faces searched for a level; a face with fewer than one beyond the threshold among
them (more than 127 close photos) gets the median level, i.e. no correction."""

HUB_WEIGHT = 1.0
"""An edge stays when ``cosine - HUB_WEIGHT x (mean level of its two faces - median level)``
still reaches the threshold's cosine: a pair of hubs needs a closer match, a pair of ordinary
faces keeps every edge. Without it, the shared photos' mixed groups were hubs holding a dozen
one-photo strangers each (calibration/: F 0.962 / 0.968 / 0.968 at 0.75 / 1.0 / 1.5)."""

HUB_SURVIVAL = (0.033, 0.212)
"""The share of false edges the hub correction leaves, as a line in ``lam``, the false edges
per face the threshold alone gives: fitted on calibration/ (lam 0.17 / 0.38 / 0.74 left
0.069 / 0.110 / 0.194 of them, while 90-96% of true edges stayed); 0.059-0.25 on the other
sets (docs/accuracy.md)."""


@dataclass(frozen=True)
class Grouping:
    """Groups of row indices (largest first, each sorted); ``messy``: rows that joined none.
    ``support[r]``: how many of row ``r``'s edges go to its own group (0 for a messy row); empty
    when unknown (a grouping read back from a file)."""

    groups: list[list[int]]
    messy: list[int]
    support: list[int] = field(default_factory=list)

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


def _within(
    base: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], threshold: float
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """For each query row, the base rows within ``threshold`` and their cosines: a faiss range
    search on inner products (distance ``d`` is cosine ``1 - d^2/2``), so memory follows the
    edges, not ``len(queries) x len(base)``."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    limits, cosines, found = index.range_search(queries, float(1.0 - threshold**2 / 2.0) - 1e-6)
    cuts = limits[1:-1]
    return list(zip(np.split(found.astype(np.int64), cuts), np.split(cosines, cuts)))


def _neighbours(vecs: npt.NDArray[np.float32], threshold: float) -> list[npt.NDArray[np.int64]]:
    """For each row, the other rows within ``threshold``."""
    return [rows[rows != i] for i, (rows, _) in enumerate(_within(vecs, vecs, threshold))]


def _hub_levels(vecs: npt.NDArray[np.float32], threshold: float) -> npt.NDArray[np.float64]:
    """Each row's level (:data:`HUB_NEIGHBOURS`) less the median level: > 0 for a hub."""
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    cosines, _ = index.search(vecs, min(HUB_SEARCH, len(vecs)))
    bar = 1.0 - threshold**2 / 2.0
    beyond = np.where(cosines < bar, cosines, np.nan)
    beyond.sort(axis=1)  # ascending, NaN last: the nearest beyond the bar are the last numbers
    levels = np.full(len(vecs), np.nan)
    for row, values in enumerate(beyond):
        found = values[~np.isnan(values)]
        if len(found):
            levels[row] = found[-HUB_NEIGHBOURS:].mean()
    if np.isnan(levels).all():
        return np.zeros(len(vecs))
    centred: npt.NDArray[np.float64] = np.nan_to_num(levels - np.nanmedian(levels))
    return centred


def _edges(vecs: npt.NDArray[np.float32], threshold: float) -> list[npt.NDArray[np.int64]]:
    """For each row, the other rows within ``threshold`` whose match survives the hub
    correction (:data:`HUB_WEIGHT`): the graph Chinese whispers runs on."""
    if len(vecs) < 2:
        return [np.empty(0, np.int64) for _ in range(len(vecs))]
    levels, bar = _hub_levels(vecs, threshold), 1.0 - threshold**2 / 2.0
    edges = []
    for row, (rows, cosines) in enumerate(_within(vecs, vecs, threshold)):
        penalty = HUB_WEIGHT * (levels[row] + levels[rows]) / 2.0
        edges.append(rows[(rows != row) & (cosines - np.maximum(penalty, 0.0) >= bar - 1e-6)])
    return edges


def chinese_whispers(
    vectors: npt.ArrayLike, threshold: float, *, max_iterations: int = 100, seed: int = 0
) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[np.int64]]]:
    """A label per row of ``vectors (n, d)`` (rows joined by an edge tend to share one), and
    each row's edges (:func:`_edges`)."""
    vecs = normalize(np.asarray(vectors, dtype=np.float32))
    labels = np.arange(len(vecs), dtype=np.int64)
    edges = _edges(vecs, threshold)
    return _whisper(labels, labels.copy(), edges, max_iterations, seed), edges


def _support(
    labels: npt.NDArray[np.int64], neighbours: Sequence[npt.NDArray[np.int64]]
) -> list[int]:
    """For each row, how many of its ``neighbours`` share its label."""
    return [int((labels[near] == labels[row]).sum()) for row, near in enumerate(neighbours)]


def _whisper(
    labels: npt.NDArray[np.int64],
    free: npt.NDArray[np.int64],
    neighbours: Sequence[npt.NDArray[np.int64]],
    max_iterations: int,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Chinese whispers: each row of ``free`` (its neighbours in ``neighbours``, in the same
    order) takes the label most common among its neighbours, visited in an order drawn from
    ``seed``, until no label changes; the other rows keep theirs. ``labels`` is updated."""
    rng = np.random.default_rng(seed)
    for _ in range(max_iterations):
        changed = False
        for at in rng.permutation(len(free)):
            near = neighbours[at]
            if len(near) == 0:
                continue
            values, counts = np.unique(labels[near], return_counts=True)
            best = int(values[np.argmax(counts)])  # np.unique sorts: ties go to the smaller label
            if best != labels[free[at]]:
                labels[free[at]] = best
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


def false_match_rate(model_id: str, threshold: float) -> float | None:
    """The calibrated per-comparison FMR at ``threshold`` (the share of impostor pairs at or
    below it, interpolated in log FMR; below the lowest measured pair the fitted tail), or None
    for a model with no open-set calibration."""
    table = default_open_set(model_id)
    if table is None:
        return None
    dists = np.asarray([d for _, d in table.fmr], np.float64)
    if threshold < dists[0]:
        a, b = table.tail
        return float(10.0 ** (a + b * threshold))
    return float(10.0 ** np.interp(threshold, dists, np.log10([f for f, _ in table.fmr])))


@dataclass(frozen=True)
class Expected:
    """The precision to expect of one grouping: ``false_edges`` per face on average, and the
    expected BCubed ``precision`` (the mean share of a face's group that is its person)."""

    precision: float
    false_edges: float

    def document(self) -> dict[str, float]:
        """The compact form answers carry."""
        return {"bcubed_precision": round(self.precision, 3),
                "false_edges_per_face": round(self.false_edges, 4)}  # fmt: skip


def expected_precision(grouping: Grouping, threshold: float, model_id: str) -> Expected | None:
    """The precision to expect of ``grouping`` (made at ``threshold``), from the calibrated
    impostor distribution and the set's size, the one place it is computed.

    Each face has ``(n - 1) x FMR(threshold)`` false edges on average before the hub
    correction (nearly every other face is another person's), ``lam`` after it
    (:data:`HUB_SURVIVAL`). A grouped face held in its group by ``k`` edges
    (:attr:`Grouping.support`) is counted wrongly joined with chance ``min(1, lam / k)``: the
    expected share of those edges that are false; a messy face is never wrong. The expected
    BCubed precision is one minus the mean of that. On the shared photos (docs/accuracy.md,
    tests/test_grouping.py): at the size-aware threshold 0.994 stated, 0.993 measured on 521
    faces, 0.992 and 0.981 on 3,877; at tighter thresholds within 0.004; where false edges
    outnumber true ones it errs both ways (3,877 faces at 0.36: 0.931 stated, 0.885 measured;
    at the fixed 0.3764: 0.579, 0.647). None without a calibration or the support counts (a
    grouping read back from a file)."""
    n = sum(map(len, grouping.groups)) + len(grouping.messy)
    rate = false_match_rate(model_id, threshold)
    if rate is None or len(grouping.support) != n:
        return None
    before = max(n - 1, 0) * rate
    lam = before * min(1.0, HUB_SURVIVAL[0] + HUB_SURVIVAL[1] * before)
    held = np.asarray(grouping.support, np.float64)
    wrong = np.where(held > 0, np.minimum(1.0, lam / np.maximum(held, 1.0)), 0.0)
    return Expected(1.0 - float(wrong.sum()) / max(n, 1), lam)


def group(vectors: npt.ArrayLike, threshold: float) -> Grouping:
    """Faces grouped by person at ``threshold`` (see :func:`edge_threshold` for the default
    rule); singletons (faces like no other) go to ``messy``."""
    labels, neighbours = chinese_whispers(vectors, threshold)
    return _from_labels(labels, _support(labels, neighbours))


def _from_labels(labels: npt.NDArray[np.int64], support: list[int]) -> Grouping:
    """Rows sharing a label form a group (largest first, then by first row); a label held by
    one row alone puts that row in ``messy``."""
    members: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(row)
    groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))
    messy = sorted(m[0] for m in members.values() if len(m) == 1)
    return Grouping(groups, messy, support)


def extend(
    known: npt.ArrayLike,
    grouping: Grouping,
    new: npt.ArrayLike,
    threshold: float,
    *,
    max_iterations: int = 100,
    seed: int = 0,
) -> Grouping:
    """``grouping`` of the ``known`` rows, with the ``new`` rows (numbered after them) added
    without regrouping: every existing group keeps all its faces.

    The rule: Chinese whispers over the new faces and the known faces that had joined no group
    (``messy``), with every grouped face's label held fixed. So a new face joins the existing
    group most of its faces within ``threshold`` hold (through other new faces too, as in a
    whole regrouping), and the rest form new groups among themselves; a face that had joined
    no group may join one. Pass the edge threshold for the new total
    (``edge_threshold(len(known) + len(new), model)``), so the precision rule holds at the size
    the set has grown to; existing groups were formed at their own size's threshold and are not
    revisited. That costs up to 0.04 BCubed F against grouping everything at once on the shared
    photos, almost all precision: the first grouping, with fewer faces per person, merged more
    (docs/accuracy.md, tests/test_grouping.py). Cost: the edges of every face (:func:`_edges`),
    which the support counts of the expected precision need anyway (:func:`expected_precision`).
    """
    old = normalize(np.asarray(known, dtype=np.float32))
    fresh = normalize(np.asarray(new, dtype=np.float32)).reshape(-1, old.shape[1])
    vecs = np.concatenate([old, fresh])
    labels = np.arange(len(vecs), dtype=np.int64) + len(grouping.groups)
    for number, members in enumerate(grouping.groups):
        labels[members] = number
    free = np.asarray(sorted(grouping.messy) + list(range(len(old), len(vecs))), dtype=np.int64)
    edges = _edges(vecs, threshold)
    if len(free):
        _whisper(labels, free, [edges[row] for row in free], max_iterations, seed)
    return _from_labels(labels, _support(labels, edges))
