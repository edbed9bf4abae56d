"""Error rates of a face matcher, as small pure functions over arrays of distances.

Vocabulary is ISO/IEC 19795-1's, as NIST FRTE uses it:

- A *score* is a distance (:func:`visage.decision.distances`): lower is more similar, and a
  comparison *matches* when ``distance <= threshold``.
- *Genuine* (mated) comparisons are of one person, *impostor* (non-mated) ones of two.
  ``FMR(t)`` is the share of impostor distances ``<= t``; ``FNMR(t)`` the share of genuine
  distances ``> t``; ``TAR = 1 - FNMR``. In identification the same quantities are called
  FPIR (non-mated searches) and FNIR (mated searches).
- ``NaN`` marks a comparison that could not be made because no face was acquired. It never
  matches and stays in the denominators, so a failed genuine comparison is a false non-match
  and a failed impostor one is a correct rejection: the *generalised* rates (GFMR, GFNMR) of
  ISO/IEC 19795-1. In :func:`accuracy` a ``NaN`` is always a wrong decision.

Thresholds are only ever placed at observed distances (or just below all of them), so every
reported rate is one that a deployment using that threshold would actually have had on the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..decision import distances

Floats = npt.NDArray[np.float64]

#: How many false matches a target FMR should be expected to produce on the data before a figure
#: at that target is called supported: ``n_impostor >= MIN_EXPECTED_ERRORS / target``. Ten is the
#: usual floor; Doddington's "rule of 30" (30 errors for +-30% at 90% confidence) is stricter.
MIN_EXPECTED_ERRORS = 10.0


def _scores(values: npt.ArrayLike) -> Floats:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d array of distances, got shape {arr.shape}")
    return arr


def _matchable(values: npt.ArrayLike) -> Floats:
    """Sorted distances with ``NaN`` (no face acquired) as ``+inf``: it never matches."""
    arr = _scores(values)
    return np.sort(np.where(np.isnan(arr), np.inf, arr))


@dataclass(frozen=True)
class Roc:
    """Error rates at every threshold where one of them changes.

    ``thresholds (k,)`` increase; ``fmr (k,)`` and ``fnmr (k,)`` are the rates at each. The first
    threshold lies just below every distance (nothing matches: FMR 0, FNMR 1), the others are the
    distinct finite distances, so tied distances move both rates in one step.
    """

    thresholds: Floats
    fmr: Floats
    fnmr: Floats
    n_genuine: int
    n_impostor: int

    @property
    def tar(self) -> Floats:
        """True-accept rate ``1 - FNMR`` at each threshold."""
        return 1.0 - self.fnmr


def roc(genuine: npt.ArrayLike, impostor: npt.ArrayLike) -> Roc:
    """The ROC of genuine ``(n,)`` and impostor ``(m,)`` distances (``NaN``: not acquired)."""
    gen = _matchable(genuine)
    imp = _matchable(impostor)
    if gen.size == 0 or imp.size == 0:
        raise ValueError("a ROC needs at least one genuine and one impostor distance")
    pooled = np.concatenate([gen, imp])
    finite = np.unique(pooled[np.isfinite(pooled)])
    below_all = np.nextafter(finite[0], -np.inf) if finite.size else -np.inf
    thresholds = np.concatenate([[below_all], finite])
    fmr = np.searchsorted(imp, thresholds, side="right") / imp.size
    fnmr = 1.0 - np.searchsorted(gen, thresholds, side="right") / gen.size
    return Roc(thresholds, fmr, fnmr, int(gen.size), int(imp.size))


def _closed(curve: Roc) -> tuple[Floats, Floats, Floats]:
    """The curve with its end point at ``+inf`` (everything matches), for areas and crossings.

    Failures to acquire are ``+inf`` too, so at the end point they tie with each other: AUC then
    counts such a tie as half a win, like the Mann-Whitney statistic it equals.
    """
    return (
        np.append(curve.thresholds, np.inf),
        np.append(curve.fmr, 1.0),
        np.append(curve.fnmr, 0.0),
    )


def auc(curve: Roc) -> float:
    """Area under TAR against FMR.

    Equals the probability that a random genuine distance is below a random impostor one, ties
    counting half; 1.0 is perfect separation, 0.5 is chance.
    """
    _, fmr, fnmr = _closed(curve)
    return float(np.trapezoid(1.0 - fnmr, fmr))


@dataclass(frozen=True)
class Eer:
    """Equal error rate: where FMR and FNMR cross, interpolated between the two ROC points that
    bracket it; ``threshold`` is the observed threshold of the nearer of those points."""

    rate: float
    threshold: float


def eer(curve: Roc) -> Eer:
    """The equal error rate of a ROC (see :class:`Eer`)."""
    thresholds, fmr, fnmr = _closed(curve)
    gap = fnmr - fmr  # 1 at the first point, -1 at the last, never increasing
    j = int(np.argmax(gap <= 0))
    i = j - 1
    if gap[j] == 0:
        return Eer(float(fmr[j]), float(thresholds[j]))
    alpha = gap[i] / (gap[i] - gap[j])
    rate = fmr[i] + alpha * (fmr[j] - fmr[i])
    return Eer(float(rate), float(thresholds[j] if alpha >= 0.5 else thresholds[i]))


@dataclass(frozen=True)
class OperatingPoint:
    """The rates at the threshold chosen for a target false-match rate, and what backs them.

    ``threshold`` is the largest observed distance whose FMR does not exceed ``target_fmr``; ``fmr``
    and ``fnmr`` are the rates the data actually shows there. ``supported`` is False when there
    are too few impostor comparisons to measure an FMR that small (fewer than
    ``MIN_EXPECTED_ERRORS / target_fmr``): the figure is then an optimistic extrapolation.
    """

    target_fmr: float
    threshold: float
    fmr: float
    fnmr: float
    n_genuine: int
    n_impostor: int
    supported: bool

    @property
    def tar(self) -> float:
        """True-accept rate at this threshold (``1 - fnmr``)."""
        return 1.0 - self.fnmr


def at_fmr(
    curve: Roc, target_fmr: float, *, min_expected_errors: float = MIN_EXPECTED_ERRORS
) -> OperatingPoint:
    """TAR / FNMR at a target FMR (a threshold that reaches FMR exactly ``target`` is allowed)."""
    if not 0.0 <= target_fmr <= 1.0:
        raise ValueError(f"target FMR must lie in [0, 1], got {target_fmr}")
    k = int(np.count_nonzero(curve.fmr <= target_fmr)) - 1  # fmr never decreases; fmr[0] == 0
    return OperatingPoint(
        target_fmr=target_fmr,
        threshold=float(curve.thresholds[k]),
        fmr=float(curve.fmr[k]),
        fnmr=float(curve.fnmr[k]),
        n_genuine=curve.n_genuine,
        n_impostor=curve.n_impostor,
        supported=curve.n_impostor * target_fmr >= min_expected_errors,
    )


def rates_at_threshold(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike, threshold: float
) -> tuple[float, float]:
    """``(FMR, FNMR)`` at a fixed threshold; an empty side gives ``NaN`` for its rate."""
    gen = _matchable(genuine)
    imp = _matchable(impostor)
    fmr = float(np.mean(imp <= threshold)) if imp.size else float("nan")
    fnmr = float(np.mean(gen > threshold)) if gen.size else float("nan")
    return fmr, fnmr


@dataclass(frozen=True)
class VerificationSummary:
    """The ROC of a set of comparisons, its threshold-free figures and its rates at target FMRs."""

    roc: Roc
    n_genuine: int
    n_impostor: int
    auc: float
    eer: Eer
    operating_points: tuple[OperatingPoint, ...]


def verification_summary(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike, target_fmrs: Sequence[float]
) -> VerificationSummary:
    """AUC, EER and :func:`at_fmr` for each target, from one ROC."""
    curve = roc(genuine, impostor)
    return VerificationSummary(
        roc=curve,
        n_genuine=curve.n_genuine,
        n_impostor=curve.n_impostor,
        auc=auc(curve),
        eer=eer(curve),
        operating_points=tuple(at_fmr(curve, t) for t in target_fmrs),
    )


def accuracy(distances_: npt.ArrayLike, same: npt.ArrayLike, threshold: float) -> float:
    """Share of right decisions at ``threshold``; a ``NaN`` distance is always wrong."""
    dist = _scores(distances_)
    truth = np.asarray(same, dtype=bool)
    if dist.size == 0:
        raise ValueError("accuracy of no comparisons")
    decided = np.where(np.isnan(dist), ~truth, dist <= threshold)
    return float(np.mean(decided == truth))


def best_threshold(distances_: npt.ArrayLike, same: npt.ArrayLike) -> tuple[float, float]:
    """The threshold of highest :func:`accuracy` on these comparisons, and that accuracy.

    Candidates are the midpoints between consecutive distinct distances (a threshold chosen on
    one sample then sits in the gap rather than on a point), one just below all and the largest
    distance. Of equally accurate candidates the lowest, i.e. strictest, wins.
    """
    dist = _scores(distances_)
    truth = np.asarray(same, dtype=bool)
    finite = np.unique(dist[~np.isnan(dist)])
    if finite.size == 0:
        raise ValueError("no comparable pairs to choose a threshold on")
    candidates = np.concatenate(
        [[np.nextafter(finite[0], -np.inf)], (finite[:-1] + finite[1:]) / 2.0, [finite[-1]]]
    )
    gen = np.sort(dist[truth & ~np.isnan(dist)])
    imp = np.sort(dist[~truth & ~np.isnan(dist)])
    right = np.searchsorted(gen, candidates, side="right") + (
        imp.size - np.searchsorted(imp, candidates, side="right")
    )
    best = int(np.argmax(right))
    return float(candidates[best]), float(right[best] / dist.size)


@dataclass(frozen=True)
class KFoldAccuracy:
    """Accuracy per fold, each at a threshold chosen on the other folds.

    ``std`` is the sample standard deviation over folds and ``standard_error`` is ``std /
    sqrt(folds)``, the ``mean +- S_E`` that the LFW protocol asks papers to report.
    """

    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    @property
    def standard_error(self) -> float:
        return self.std / float(np.sqrt(len(self.accuracies)))


def kfold_accuracy(
    distances_: npt.ArrayLike, same: npt.ArrayLike, folds: npt.ArrayLike
) -> KFoldAccuracy:
    """Cross-validated accuracy: per fold, :func:`best_threshold` on the others, tested on it."""
    dist = _scores(distances_)
    truth = np.asarray(same, dtype=bool)
    fold = np.asarray(folds)
    labels = np.unique(fold)
    if labels.size < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accuracies: list[float] = []
    thresholds: list[float] = []
    for label in labels:
        test = fold == label
        threshold, _ = best_threshold(dist[~test], truth[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy(dist[test], truth[test], threshold))
    return KFoldAccuracy(tuple(accuracies), tuple(thresholds))


def person_distances(
    probes: npt.ArrayLike, templates: npt.ArrayLike, template_persons: Sequence[str]
) -> tuple[list[str], Floats]:
    """Distances from each probe to each enrolled person: its nearest template.

    ``probes (p, d)`` and ``templates (t, d)`` are normalised embeddings; a probe row of ``NaN``
    (no face acquired) gives a row of ``NaN``. Returns the persons in first-seen order and the
    ``(p, persons)`` matrix.
    """
    probe_arr = np.asarray(probes, dtype=np.float32)
    template_arr = np.asarray(templates, dtype=np.float32)
    persons = list(dict.fromkeys(template_persons))
    index = {p: i for i, p in enumerate(persons)}
    column = np.array([index[p] for p in template_persons], dtype=np.intp)
    matrix = np.full((probe_arr.shape[0], len(persons)), np.inf)
    for row, probe in enumerate(probe_arr):
        if np.isnan(probe).any():
            matrix[row] = np.nan
            continue
        np.minimum.at(matrix[row], column, distances(probe, template_arr))
    return persons, matrix


def _mate_columns(persons: Sequence[str], probe_persons: Sequence[str]) -> npt.NDArray[np.intp]:
    index = {p: i for i, p in enumerate(persons)}
    missing = sorted({p for p in probe_persons if p not in index})
    if missing:
        raise ValueError(f"mated probes of persons not enrolled: {', '.join(missing[:5])}")
    return np.array([index[p] for p in probe_persons], dtype=np.intp)


def mated_ranks(
    matrix: npt.ArrayLike, persons: Sequence[str], probe_persons: Sequence[str]
) -> Floats:
    """Rank (1 = nearest) of each mated probe's own person among ``persons``.

    A person tied with the mate counts as ahead of it (ranks are pessimistic); a probe with no
    face acquired has rank ``+inf`` and is missed at every rank.
    """
    dist = np.asarray(matrix, dtype=np.float64)
    mate = dist[np.arange(dist.shape[0]), _mate_columns(persons, probe_persons)]
    ranks: Floats = np.count_nonzero(dist <= mate[:, None], axis=1).astype(np.float64)
    ranks[np.isnan(mate)] = np.inf
    return ranks


def cmc(ranks: npt.ArrayLike, max_rank: int) -> Floats:
    """Cumulative match characteristic: ``out[k - 1]`` is the share of ranks ``<= k``."""
    r = _scores(ranks)
    if r.size == 0:
        raise ValueError("a CMC needs at least one mated search")
    return np.array([np.mean(r <= k) for k in range(1, max_rank + 1)])


def mated_scores(
    matrix: npt.ArrayLike, persons: Sequence[str], probe_persons: Sequence[str], *, rank: int = 1
) -> Floats:
    """Each mated search's distance to its mate if the mate is within ``rank``, else ``+inf``.

    These are the "genuine" side of open-set identification: FNIR at threshold ``t`` is the
    share of them ``> t`` (NIST FRTE 1:N counts a mate outside the candidate list as a miss).
    """
    dist = np.asarray(matrix, dtype=np.float64)
    mate = dist[np.arange(dist.shape[0]), _mate_columns(persons, probe_persons)]
    ranks = mated_ranks(dist, persons, probe_persons)
    scores: Floats = np.where(ranks <= rank, mate, np.where(np.isnan(mate), np.nan, np.inf))
    return scores


def nonmated_scores(matrix: npt.ArrayLike) -> Floats:
    """Each non-mated search's nearest distance (``NaN`` when no face was acquired): FPIR at
    threshold ``t`` is the share of them ``<= t``."""
    dist = np.asarray(matrix, dtype=np.float64)
    out = np.full(dist.shape[0], np.nan)
    acquired = ~np.isnan(dist).any(axis=1)
    out[acquired] = dist[acquired].min(axis=1)
    return out


def fnir_at_fpir(
    mated: npt.ArrayLike, nonmated: npt.ArrayLike, target_fpir: float
) -> OperatingPoint:
    """Open-set FNIR at a target FPIR: :func:`at_fmr` with mated searches as genuine and
    non-mated ones as impostor comparisons (``fmr``/``fnmr`` of the result read FPIR/FNIR)."""
    return at_fmr(roc(mated, nonmated), target_fpir)


@dataclass(frozen=True)
class GroupRates:
    """One group's error rates at a threshold shared by all groups (NISTIR 8280).

    ``fmr_ratio`` is the group's FMR over the FMR of all comparisons at the same threshold: the
    demographic differential in false matches (``NaN`` when the overall FMR is 0).
    """

    group: str
    n_genuine: int
    n_impostor: int
    fmr: float
    fnmr: float
    fmr_ratio: float


def group_rates(
    genuine: npt.ArrayLike,
    genuine_groups: Sequence[str | None],
    impostor: npt.ArrayLike,
    impostor_groups: Sequence[str | None],
    threshold: float,
) -> list[GroupRates]:
    """Per-group FMR and FNMR at one global threshold, sorted by group.

    Each comparison carries the group it belongs to, or ``None`` when it belongs to none (an
    impostor pair across two groups, or a person without a label). Groups come only from a table
    the user supplies; nothing here or elsewhere in Visage infers them.
    """
    gen = _scores(genuine)
    imp = _scores(impostor)
    gen_groups = np.array(genuine_groups, dtype=object)
    imp_groups = np.array(impostor_groups, dtype=object)
    overall_fmr, _ = rates_at_threshold(gen, imp, threshold)
    names = sorted({g for g in [*genuine_groups, *impostor_groups] if g is not None})
    out: list[GroupRates] = []
    for name in names:
        g_gen = gen[gen_groups == name]
        g_imp = imp[imp_groups == name]
        fmr, fnmr = rates_at_threshold(g_gen, g_imp, threshold)
        ratio = fmr / overall_fmr if overall_fmr > 0 else float("nan")
        out.append(GroupRates(name, int(g_gen.size), int(g_imp.size), fmr, fnmr, ratio))
    return out


@dataclass(frozen=True)
class BCubed:
    """BCubed precision, recall and F of a clustering (Amigó et al. 2009): per item, the share
    of its cluster that is its class, and of its class that is in its cluster, averaged."""

    precision: float
    recall: float

    @property
    def f(self) -> float:
        return 2 * self.precision * self.recall / (self.precision + self.recall)


def bcubed(clusters: Sequence[object], classes: Sequence[object]) -> BCubed:
    """BCubed of cluster labels against true classes, one of each per item."""
    if len(clusters) != len(classes) or not clusters:
        raise ValueError("bcubed needs one cluster and one class per item, at least one item")
    from collections import Counter

    both, sizes, members = Counter(zip(clusters, classes)), Counter(clusters), Counter(classes)
    pairs = list(zip(clusters, classes))
    precision = sum(both[p] / sizes[p[0]] for p in pairs) / len(pairs)
    recall = sum(both[p] / members[p[1]] for p in pairs) / len(pairs)
    return BCubed(precision, recall)

