"""Every metric on tiny arrays whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visage.eval import metrics as m

# Four genuine and four impostor distances, used by several tests.
#   genuine  0.1 0.2 0.3         0.6
#   impostor             0.4 0.5     0.7 0.8
GEN = [0.1, 0.2, 0.3, 0.6]
IMP = [0.4, 0.5, 0.7, 0.8]


def test_roc_steps_at_every_distinct_distance() -> None:
    curve = m.roc(GEN, IMP)
    assert curve.thresholds[0] < 0.1
    assert curve.thresholds[1:].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert curve.fmr.tolist() == [0, 0, 0, 0, 0.25, 0.5, 0.5, 0.75, 1]
    assert curve.fnmr.tolist() == [1, 0.75, 0.5, 0.25, 0.25, 0.25, 0, 0, 0]
    assert curve.tar.tolist() == [0, 0.25, 0.5, 0.75, 0.75, 0.75, 1, 1, 1]
    assert (curve.n_genuine, curve.n_impostor) == (4, 4)


def test_roc_moves_tied_distances_in_one_step() -> None:
    # A genuine and an impostor distance tie at 0.5: one threshold takes both.
    curve = m.roc([0.2, 0.5], [0.5, 0.9])
    assert curve.thresholds[1:].tolist() == [0.2, 0.5, 0.9]
    assert curve.fmr.tolist() == [0, 0, 0.5, 1]
    assert curve.fnmr.tolist() == [1, 0.5, 0, 0]


def test_roc_counts_failures_to_acquire_as_never_matching() -> None:
    # A NaN genuine is a false non-match at every threshold; a NaN impostor never false-matches.
    curve = m.roc([0.2, np.nan], [0.5, np.nan])
    assert curve.thresholds[1:].tolist() == [0.2, 0.5]
    assert curve.fmr.tolist() == [0, 0, 0.5]
    assert curve.fnmr.tolist() == [1, 0.5, 0.5]


def test_roc_refuses_an_empty_side() -> None:
    with pytest.raises(ValueError):
        m.roc([], [0.5])


def test_auc_is_the_share_of_genuine_below_impostor_pairs() -> None:
    # 0.1, 0.2, 0.3 beat all four impostors (12), 0.6 beats 0.7 and 0.8 (2): 14 / 16.
    assert m.auc(m.roc(GEN, IMP)) == pytest.approx(14 / 16)
    assert m.auc(m.roc([0.1], [0.9])) == pytest.approx(1.0)
    assert m.auc(m.roc([0.9], [0.1])) == pytest.approx(0.0)


def test_auc_counts_ties_as_half() -> None:
    assert m.auc(m.roc([0.5], [0.5])) == pytest.approx(0.5)
    # pairs: (0.2,0.5) win, (0.2,0.9) win, (0.5,0.5) half, (0.5,0.9) win: 3.5 / 4
    assert m.auc(m.roc([0.2, 0.5], [0.5, 0.9])) == pytest.approx(3.5 / 4)


def test_auc_with_failures_to_acquire() -> None:
    # genuine {0.2, fail} x impostor {0.5, fail}: (0.2,0.5) win, (0.2,fail) win,
    # (fail,0.5) loss, (fail,fail) half: 2.5 / 4.
    assert m.auc(m.roc([0.2, np.nan], [0.5, np.nan])) == pytest.approx(2.5 / 4)


def test_eer_on_an_exact_crossing() -> None:
    # At threshold 0.4: FMR 1/4 (0.4) and FNMR 1/4 (0.6).
    result = m.eer(m.roc(GEN, IMP))
    assert result.rate == pytest.approx(0.25)
    assert result.threshold == pytest.approx(0.4)


def test_eer_interpolates_between_points() -> None:
    # genuine 0.1 0.4, impostor 0.3 0.5. Points (FMR, FNMR): t=0.1 (0, .5), t=0.3 (.5, .5)...
    # gap FNMR-FMR: t=0.1 +.5, t=0.3 0 -> exact 0.5 at t=0.3.
    assert m.eer(m.roc([0.1, 0.4], [0.3, 0.5])).rate == pytest.approx(0.5)
    # genuine 0.1 0.2 0.9, impostor 0.3: t=0.2 (0, 1/3), t=0.3 (1, 1/3): the segment crosses
    # FMR = FNMR at 1/3, nearer the t=0.2 end (alpha = 1/3).
    result = m.eer(m.roc([0.1, 0.2, 0.9], [0.3]))
    assert result.rate == pytest.approx(1 / 3)
    assert result.threshold == pytest.approx(0.2)


def test_eer_of_perfect_separation_is_zero() -> None:
    assert m.eer(m.roc([0.1, 0.2], [0.8, 0.9])).rate == pytest.approx(0.0)


def test_at_fmr_takes_the_largest_threshold_within_target() -> None:
    curve = m.roc(GEN, IMP)
    point = m.at_fmr(curve, 0.25)  # exactly reachable at 0.4 (and up to 0.5 exclusive)
    assert (point.threshold, point.fmr, point.fnmr) == (0.4, 0.25, 0.25)
    assert point.tar == pytest.approx(0.75)
    point = m.at_fmr(curve, 0.2)  # 0.25 is too many: stop before the first impostor
    assert (point.threshold, point.fmr, point.fnmr) == (0.3, 0.0, 0.25)
    point = m.at_fmr(curve, 1.0)
    assert (point.threshold, point.fmr, point.fnmr) == (0.8, 1.0, 0.0)


def test_at_fmr_with_tied_impostors_at_the_edge() -> None:
    # Two impostors tie at 0.4: reaching either means FMR 0.5, which a target of 0.25 forbids.
    curve = m.roc(GEN, [0.4, 0.4, 0.5, 0.8])
    point = m.at_fmr(curve, 0.25)
    assert (point.threshold, point.fmr, point.fnmr) == (0.3, 0.0, 0.25)
    assert m.at_fmr(curve, 0.5).threshold == 0.4


def test_at_fmr_below_every_distance() -> None:
    # Impostors tie with the smallest genuine: no observed distance keeps FMR at 0.
    point = m.at_fmr(m.roc([0.1, 0.5], [0.1, 0.9]), 0.0)
    assert point.threshold < 0.1
    assert (point.fmr, point.fnmr) == (0.0, 1.0)


def test_at_fmr_flags_targets_the_data_cannot_support() -> None:
    curve = m.roc(GEN, np.linspace(0.4, 0.9, 1000))
    assert m.at_fmr(curve, 1e-2).supported  # 1000 * 1e-2 = 10 expected false matches
    assert not m.at_fmr(curve, 1e-3).supported  # 1 expected
    assert m.at_fmr(curve, 1e-3).n_impostor == 1000
    with pytest.raises(ValueError):
        m.at_fmr(curve, 1.5)


def test_rates_at_threshold() -> None:
    assert m.rates_at_threshold(GEN, IMP, 0.5) == (0.5, 0.25)
    fmr, fnmr = m.rates_at_threshold([], IMP, 0.5)
    assert fmr == 0.5 and math.isnan(fnmr)


def test_verification_summary() -> None:
    summary = m.verification_summary(GEN, IMP, [0.25, 0.0])
    assert summary.auc == pytest.approx(14 / 16)
    assert summary.eer.rate == pytest.approx(0.25)
    assert [p.threshold for p in summary.operating_points] == [0.4, 0.3]
    assert (summary.n_genuine, summary.n_impostor) == (4, 4)


def test_accuracy_counts_failures_as_wrong() -> None:
    # at 0.5: 0.2 same (right), 0.6 different (right), 0.4 different (wrong), NaN same (wrong)
    assert m.accuracy([0.2, 0.6, 0.4, np.nan], [True, False, False, True], 0.5) == 0.5
    assert m.accuracy([np.nan], [False], 0.5) == 0.0


def test_best_threshold_uses_midpoints_and_prefers_the_strictest() -> None:
    # sorted: 0.1 same, 0.3 diff, 0.5 same, 0.7 diff. Candidates and right answers:
    # below 0.1: 2, 0.2: 3, 0.4: 2, 0.6: 3, 0.7: 2. Best is 3, at 0.2 and 0.6: take 0.2.
    threshold, acc = m.best_threshold([0.5, 0.7, 0.1, 0.3], [True, False, True, False])
    assert threshold == pytest.approx(0.2)
    assert acc == 0.75


def test_best_threshold_can_reject_or_accept_everything() -> None:
    threshold, acc = m.best_threshold([0.1, 0.2], [False, False])
    assert threshold < 0.1 and acc == 1.0
    threshold, acc = m.best_threshold([0.1, 0.2], [True, True])
    assert threshold == 0.2 and acc == 1.0


def test_kfold_accuracy_chooses_each_threshold_on_the_other_folds() -> None:
    # fold 0: 0.2 same, 0.8 diff; fold 1: 0.3 same, 0.4 diff.
    # Fold 0 is tested at 0.35 (midpoint of fold 1): both right. Fold 1 is tested at 0.5
    # (midpoint of fold 0): 0.4 is called same, wrong: 1/2.
    result = m.kfold_accuracy([0.2, 0.8, 0.3, 0.4], [True, False, True, False], [0, 0, 1, 1])
    assert result.thresholds == pytest.approx((0.35, 0.5))
    assert result.accuracies == (1.0, 0.5)
    assert result.mean == 0.75
    assert result.std == pytest.approx(math.sqrt(2 * 0.25**2))  # sample std, ddof = 1
    assert result.standard_error == pytest.approx(result.std / math.sqrt(2))


def test_kfold_accuracy_needs_two_folds() -> None:
    with pytest.raises(ValueError):
        m.kfold_accuracy([0.2, 0.8], [True, False], [0, 0])


def _unit(*angles: float) -> np.ndarray:
    return np.array([[math.cos(a), math.sin(a)] for a in angles], dtype=np.float32)


def test_person_distances_take_each_persons_nearest_template() -> None:
    templates = _unit(0.0, 1.0, 3.0)  # ann at 0 and 1 rad, bob at 3 rad
    probes = np.vstack([_unit(0.9), np.full((1, 2), np.nan, dtype=np.float32)])
    persons, matrix = m.person_distances(probes, templates, ["ann", "ann", "bob"])
    assert persons == ["ann", "bob"]
    # The distance between unit vectors an angle a apart is the chord 2 sin(a / 2).
    expected = [2 * math.sin(0.1 / 2), 2 * math.sin(2.1 / 2)]
    assert matrix[0] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(matrix[1]).all()


MATRIX = np.array(
    [
        [0.2, 0.5, 0.9],  # probe of a: rank 1
        [0.7, 0.4, 0.4],  # probe of c: tied with b, counted behind it: rank 2
        [0.8, 0.3, 0.6],  # probe of a: rank 3
        [np.nan, np.nan, np.nan],  # probe of b, no face: never found
    ]
)
PERSONS = ["a", "b", "c"]
PROBES = ["a", "c", "a", "b"]


def test_mated_ranks_are_pessimistic_on_ties() -> None:
    assert m.mated_ranks(MATRIX, PERSONS, PROBES).tolist() == [1, 2, 3, math.inf]


def test_mated_ranks_refuse_probes_of_unenrolled_persons() -> None:
    with pytest.raises(ValueError, match="zed"):
        m.mated_ranks(MATRIX[:1], PERSONS, ["zed"])


def test_cmc() -> None:
    assert m.cmc([1, 2, 3, math.inf], 4).tolist() == [0.25, 0.5, 0.75, 0.75]
    with pytest.raises(ValueError):
        m.cmc([], 1)


def test_mated_scores_miss_mates_outside_the_rank() -> None:
    assert m.mated_scores(MATRIX, PERSONS, PROBES).tolist()[:3] == [0.2, math.inf, math.inf]
    at_rank_2 = m.mated_scores(MATRIX, PERSONS, PROBES, rank=2)
    assert at_rank_2.tolist()[:3] == [0.2, 0.4, math.inf]
    assert math.isnan(at_rank_2[3])


def test_nonmated_scores_are_the_nearest_candidate() -> None:
    scores = m.nonmated_scores(MATRIX)
    assert scores.tolist()[:3] == [0.2, 0.4, 0.3]
    assert math.isnan(scores[3])


def test_fnir_at_fpir() -> None:
    # mated 0.1 0.2 inf(missed) NaN(no face); non-mated 0.15 0.5 0.6 0.7.
    # FPIR 0.25 allows the threshold up to 0.5 exclusive -> 0.2: FNIR 2/4.
    point = m.fnir_at_fpir([0.1, 0.2, np.inf, np.nan], [0.15, 0.5, 0.6, 0.7], 0.25)
    assert (point.threshold, point.fmr, point.fnmr) == (0.2, 0.25, 0.5)
    # FPIR 0: only below 0.15 -> 0.1: FNIR 3/4.
    point = m.fnir_at_fpir([0.1, 0.2, np.inf, np.nan], [0.15, 0.5, 0.6, 0.7], 0.0)
    assert (point.threshold, point.fnmr) == (0.1, 0.75)


def test_group_rates_at_one_global_threshold() -> None:
    # At 0.45: group x impostors 0.4 (false match) 0.5; group y impostors 0.7 0.8;
    # the cross-group impostor 0.3 (None) is a false match counted only overall.
    # Overall FMR = 2/5 = 0.4; x: 1/2 -> ratio 1.25; y: 0 -> ratio 0.
    rates = m.group_rates(
        [0.1, 0.6, 0.2],
        ["x", "x", "y"],
        [0.4, 0.5, 0.7, 0.8, 0.3],
        ["x", "x", "y", "y", None],
        0.45,
    )
    assert [r.group for r in rates] == ["x", "y"]
    x, y = rates
    assert (x.n_genuine, x.n_impostor, x.fmr, x.fnmr) == (2, 2, 0.5, 0.5)
    assert x.fmr_ratio == pytest.approx(1.25)
    assert (y.n_genuine, y.n_impostor, y.fmr, y.fnmr, y.fmr_ratio) == (1, 2, 0.0, 0.0, 0.0)


def test_group_rates_ratio_is_nan_without_false_matches() -> None:
    (only,) = m.group_rates([0.1], ["x"], [0.9], ["x"], 0.5)
    assert only.fmr == 0.0 and math.isnan(only.fmr_ratio)
