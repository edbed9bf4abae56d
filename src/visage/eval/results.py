"""The figures of an evaluation, computed from scores into records for the CLI, JSON and report.

Protocols give distances (:mod:`.protocols`); metrics are pure functions (:mod:`.metrics`); this
module decides which figures a verification or identification evaluation reports, and how a
calibration record is derived from the same data.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..decision import (
    Calibration,
    OpenSetPoint,
    default_calibration,
    default_open_set,
    identify_point,
)
from ..errors import InputError, ModelError
from ..pipeline import Pipeline
from . import metrics
from .protocols import (
    Embedded,
    Entry,
    IdentificationScores,
    MissingFace,
    Pair,
    VerificationScores,
    embed_photos,
    pair_photos,
    score_identification,
    score_pairs,
)

MAX_MISSES = 200
"""Wrong pairs listed by name in a report (the worst first); the rest are counted."""

Floats = metrics.Floats

#: Target false-match rates reported for verification (NIST FRTE 1:1 reports the same decades).
VERIFY_FMRS = (1e-2, 1e-3, 1e-4)
#: Target false-positive identification rates reported for open-set identification.
IDENTIFY_FPIRS = (0.1, 0.01, 0.003)
#: Ranks the CMC is drawn to.
CMC_RANKS = 20


def _num(value: float) -> float | None:
    """A JSON-safe number: ``None`` for NaN and infinities, six decimals otherwise."""
    return round(float(value), 6) if math.isfinite(value) else None


@dataclass(frozen=True)
class Acquired:
    """Failure to acquire: photos embedded, how many had no face detected, and the policy."""

    photos: int
    no_face: int
    policy: str

    @classmethod
    def of(cls, embedded: Embedded) -> Acquired:
        return cls(embedded.n_photos, len(embedded.failed), str(embedded.missing_face))

    @property
    def rate(self) -> float:
        return self.no_face / self.photos if self.photos else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "photos": self.photos,
            "no_face": self.no_face,
            "fta_rate": _num(self.rate),
            "policy": self.policy,
        }


def _point_dict(point: metrics.OperatingPoint) -> dict[str, Any]:
    return {
        "target": point.target_fmr,
        "threshold": _num(point.threshold),
        "fmr": _num(point.fmr),
        "fnmr": _num(point.fnmr),
        "tar": _num(point.tar),
        "n_genuine": point.n_genuine,
        "n_impostor": point.n_impostor,
        "supported": point.supported,
    }


def _summary_dict(summary: metrics.VerificationSummary) -> dict[str, Any]:
    return {
        "n_genuine": summary.n_genuine,
        "n_impostor": summary.n_impostor,
        "auc": _num(summary.auc),
        "eer": _num(summary.eer.rate),
        "eer_threshold": _num(summary.eer.threshold),
        "at_fmr": [_point_dict(p) for p in summary.operating_points],
    }


def _check_model(calibration: Calibration | None, model_id: str) -> None:
    if calibration is not None and calibration.model_id != model_id:
        raise InputError(
            f"the calibration is for model {calibration.model_id!r}, "
            f"but these embeddings come from {model_id!r}"
        )


@dataclass(frozen=True)
class CalibrationCheck:
    """How a saved calibration's threshold does on this evaluation's data.

    In identification ``fmr``/``fnmr`` read FPIR/FNIR (rank 1) and ``accuracy`` is ``None``.
    """

    calibration: Calibration
    fmr: float
    fnmr: float
    accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.calibration.threshold,
            "target_fmr": self.calibration.target_fmr,
            "describe": self.calibration.describe(),
            "fmr": _num(self.fmr),
            "fnmr": _num(self.fnmr),
            "accuracy": None if self.accuracy is None else _num(self.accuracy),
        }


@dataclass(frozen=True)
class Miss:
    """A pair the threshold decides wrongly: a genuine pair above it (or without a face) or an
    impostor pair at or below it."""

    pair: Pair
    distance: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": str(self.pair.a),
            "b": str(self.pair.b),
            "same": self.pair.same,
            "distance": _num(self.distance),
        }


def misses(scores: VerificationScores, threshold: float) -> tuple[Miss, ...]:
    """Every pair decided wrongly at ``threshold``, the furthest from it first."""
    wrong = [
        (p, float(d))
        for p, d in zip(scores.pairs, scores.distances)
        if (p.same and not d <= threshold) or (not p.same and d <= threshold)
    ]
    wrong.sort(key=lambda pd: -abs(pd[1] - threshold) if math.isfinite(pd[1]) else -math.inf)
    return tuple(Miss(p, d) for p, d in wrong)


@dataclass(frozen=True)
class GroupVerification:
    """One user-labelled group: its rates at the shared threshold, and its own figures
    (``summary`` is ``None`` when the group lacks genuine or impostor pairs)."""

    rates: metrics.GroupRates
    summary: metrics.VerificationSummary | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.rates.group,
            "n_genuine": self.rates.n_genuine,
            "n_impostor": self.rates.n_impostor,
            "fmr_at_threshold": _num(self.rates.fmr),
            "fnmr_at_threshold": _num(self.rates.fnmr),
            "fmr_ratio": _num(self.rates.fmr_ratio),
            "summary": _summary_dict(self.summary) if self.summary else None,
        }


@dataclass(frozen=True)
class VerificationResult:
    """Everything ``visage eval verify`` reports about one pairs protocol.

    ``threshold``/``threshold_source``: the one threshold at which per-group rates are compared
    (the given calibration's, else the EER threshold of all pairs).
    """

    protocol: str
    model_id: str
    acquisition: Acquired
    kfold: metrics.KFoldAccuracy
    summary: metrics.VerificationSummary
    genuine: Floats
    impostor: Floats
    threshold: float
    threshold_source: str
    groups: tuple[GroupVerification, ...]
    calibration: CalibrationCheck | None
    misses: tuple[Miss, ...] = ()
    """Pairs decided wrongly at ``threshold``, the worst first."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "model_id": self.model_id,
            "acquisition": self.acquisition.as_dict(),
            "accuracy": {
                "mean": _num(self.kfold.mean),
                "std": _num(self.kfold.std),
                "standard_error": _num(self.kfold.standard_error),
                "folds": [_num(a) for a in self.kfold.accuracies],
                "thresholds": [_num(t) for t in self.kfold.thresholds],
            },
            **_summary_dict(self.summary),
            "group_threshold": _num(self.threshold),
            "group_threshold_source": self.threshold_source,
            "groups": [g.as_dict() for g in self.groups],
            "calibration": self.calibration.as_dict() if self.calibration else None,
            "misses": [m.as_dict() for m in self.misses[:MAX_MISSES]],
            "n_misses": len(self.misses),
        }


def _pair_group(groups: Mapping[str, str], a: str, b: str) -> str | None:
    """The group of a pair: both persons' shared label, or ``None`` (unlabelled or mixed)."""
    ga, gb = groups.get(a), groups.get(b)
    return ga if ga is not None and ga == gb else None


def _summary_or_none(
    genuine: Floats, impostor: Floats, targets: Sequence[float]
) -> metrics.VerificationSummary | None:
    if genuine.size == 0 or impostor.size == 0:
        return None
    return metrics.verification_summary(genuine, impostor, targets)


def evaluate_verification(
    scores: VerificationScores,
    embedded: Embedded,
    *,
    protocol: str,
    targets: Sequence[float] = VERIFY_FMRS,
    groups: Mapping[str, str] | None = None,
    calibration: Calibration | None = None,
) -> VerificationResult:
    """Accuracy over folds, ROC figures, per-group rates and a calibration check."""
    _check_model(calibration, embedded.model_id)
    same = scores.same
    genuine, impostor = scores.genuine, scores.impostor
    summary = metrics.verification_summary(genuine, impostor, targets)
    if calibration is not None:
        threshold, source = calibration.threshold, f"calibration {calibration.describe()}"
    else:
        threshold, source = summary.eer.threshold, "EER threshold of all pairs"
    group_results: tuple[GroupVerification, ...] = ()
    if groups is not None:
        labels = [_pair_group(groups, p.person_a, p.person_b) for p in scores.pairs]
        gen_labels = [g for g, s in zip(labels, same) if s]
        imp_labels = [g for g, s in zip(labels, same) if not s]
        rates = metrics.group_rates(genuine, gen_labels, impostor, imp_labels, threshold)
        group_results = tuple(
            GroupVerification(
                r,
                _summary_or_none(
                    genuine[np.array([g == r.group for g in gen_labels], dtype=bool)],
                    impostor[np.array([g == r.group for g in imp_labels], dtype=bool)],
                    targets,
                ),
            )
            for r in rates
        )
    check = None
    if calibration is not None:
        fmr, fnmr = metrics.rates_at_threshold(genuine, impostor, calibration.threshold)
        accuracy = metrics.accuracy(scores.distances, same, calibration.threshold)
        check = CalibrationCheck(calibration, fmr, fnmr, accuracy)
    return VerificationResult(
        protocol=protocol,
        model_id=embedded.model_id,
        acquisition=Acquired.of(embedded),
        kfold=metrics.kfold_accuracy(scores.distances, same, scores.folds),
        summary=summary,
        genuine=genuine,
        impostor=impostor,
        threshold=threshold,
        threshold_source=source,
        groups=group_results,
        calibration=check,
        misses=misses(scores, threshold),
    )


def shipped_calibration(model_id: str) -> Calibration | None:
    """The calibration Visage ships for ``model_id``, so that every evaluation shows how the
    default threshold fares on the user's data; ``None`` for a model without one (TTA)."""
    try:
        return default_calibration(model_id)
    except ModelError:
        return None


def verify_pairs(
    pairs: Sequence[Pair],
    pipeline: Pipeline,
    *,
    protocol: str,
    groups: Mapping[str, str] | None = None,
    calibration: Calibration | None = None,
    missing_face: MissingFace = MissingFace.COUNT,
    progress: Callable[[], None] | None = None,
) -> VerificationResult:
    """Embed the photos ``pairs`` name and evaluate them, checking ``calibration`` (default: the
    shipped one) on them: the one run behind ``visage eval verify`` and ``POST /v1/eval/verify``."""
    embedded = embed_photos(
        pair_photos(pairs), pipeline, missing_face=missing_face, progress=progress
    )
    return evaluate_verification(
        score_pairs(pairs, embedded),
        embedded,
        protocol=protocol,
        groups=groups,
        calibration=calibration or shipped_calibration(embedded.model_id),
    )


@dataclass(frozen=True)
class GroupIdentification:
    """One user-labelled group's searches: rank-1 of its mated probes, and FNIR / FPIR at the
    shared threshold (``NaN`` where the group has no searches of that kind)."""

    group: str
    n_mated: int
    n_nonmated: int
    rank1: float
    fnir: float
    fpir: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "rank1": _num(self.rank1),
            "fnir_at_threshold": _num(self.fnir),
            "fpir_at_threshold": _num(self.fpir),
        }


@dataclass(frozen=True)
class IdentificationResult:
    """Everything ``visage eval identify`` reports: closed-set ranks over mated searches and
    open-set FNIR at target FPIRs (empty when there are no non-mated searches)."""

    model_id: str
    acquisition: Acquired
    n_persons: int
    n_enrolled: int
    n_unenrolled_photos: int
    ranks: Floats
    cmc: Floats
    open_set: tuple[metrics.OperatingPoint, ...]
    mated: Floats
    nonmated: Floats
    threshold: float
    threshold_source: str
    groups: tuple[GroupIdentification, ...]
    calibration: CalibrationCheck | None
    decision: GalleryDecision | None = None

    def rank(self, k: int) -> float:
        """Share of mated searches whose mate is within the first ``k`` candidates."""
        return float(np.mean(self.ranks <= k))

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "acquisition": self.acquisition.as_dict(),
            "persons": self.n_persons,
            "enrolled": self.n_enrolled,
            "unenrolled_photos": self.n_unenrolled_photos,
            "mated_searches": int(self.ranks.size),
            "nonmated_searches": int(self.nonmated.size),
            "rank1": _num(self.rank(1)),
            "rank5": _num(self.rank(5)),
            "cmc": [_num(v) for v in self.cmc],
            "fnir_at_fpir": [_point_dict(p) for p in self.open_set],
            "group_threshold": _num(self.threshold),
            "group_threshold_source": self.threshold_source,
            "groups": [g.as_dict() for g in self.groups],
            "calibration": self.calibration.as_dict() if self.calibration else None,
            "decision": self.decision.as_dict() if self.decision else None,
        }


@dataclass(frozen=True)
class GalleryDecision:
    """identify's own answers over an evaluation: the gallery list enrolled in a throw-away
    :class:`~visage.gallery.Gallery` at ``target_fpir`` and every probe identified through it,
    so the figures are the product's decision (margin rule and all), not a re-implementation.
    ``fpir``: non-mated probes named as someone; ``fnir``: mated probes unknown or misnamed (a
    probe without a face is a miss); ``point``: the operating point of the last answer;
    ``curve``: ``(persons, expected FNIR)`` at the calibration's sizes, for the plot."""

    target_fpir: float
    point: OpenSetPoint
    fpir: float
    fnir: float
    curve: tuple[tuple[int, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        p = self.point
        return {
            "target_fpir": self.target_fpir, "threshold": p.threshold, "margin": p.margin,
            "fpir": _num(self.fpir), "fnir": _num(self.fnir), "expected_fnir": p.expected_fnir,
            "persons": p.persons, "templates": p.templates, "supported": p.supported,
            "basis": p.basis,
        }  # fmt: skip


def gallery_decision(
    scores: IdentificationScores,
    embedded: Embedded,
    target_fpir: float = 0.01,
    calibration: Calibration | None = None,
    *,
    scratch: Path | None = None,
) -> GalleryDecision | None:
    """Enroll ``scores.gallery`` in a temporary SQLite gallery (consent granted by ``visage eval
    identify``) and identify every probe with :meth:`Gallery.identify`; see :class:`GalleryDecision`.
    ``None`` for a model with no calibration at all (neither shipped nor ``calibration``).

    The gallery lives in a folder under ``scratch`` (default: the system's temporary folder),
    removed when this returns; its audit checkpoints go beside it, never to the anchor file
    ``$VISAGE_AUDIT_ANCHORS`` names (a server's: its chain is not this one)."""
    from ..gallery import EmbeddingItem, Gallery

    with tempfile.TemporaryDirectory(prefix="visage-eval-", dir=scratch) as tmp:
        cals = [calibration] if calibration is not None else []
        g = Gallery(
            f"sqlite:///{tmp}/eval.db",
            actor="eval",
            calibrations=cals,
            anchors=Path(tmp) / "eval.db.audit-anchors",
        )
        try:
            enrolled = [(e, embedded.vector(e.path)) for e in scores.gallery]
            dim = next((v.size for _, v in enrolled if v is not None), 128)
            g.create_collection(
                "eval", model_id=embedded.model_id, dim=dim, target_fpir=target_fpir
            )
            ids: dict[str, str] = {}
            items = []
            for entry, vector in enrolled:
                if vector is None:
                    continue
                if entry.person not in ids:
                    ids[entry.person] = g.add_person("eval", entry.person).id
                    g.grant_consent("eval", ids[entry.person], basis="consent",
                                    granted_by="visage eval identify")  # fmt: skip
                items.append(EmbeddingItem(ids[entry.person], vector))
            g.enroll_many("eval", items)
            named = missed = n_mated = n_strangers = 0
            point = None
            for probe, mated in zip(scores.probes, scores.mated, strict=True):
                vector = embedded.vector(probe.path)
                try:
                    answer = None if vector is None or not ids else g.identify("eval", vector, k=1)
                except ModelError:  # no threshold of any kind for this model
                    return None
                best = None if answer is None else answer.best
                point = answer.operating_point if answer is not None else point
                if mated:
                    n_mated += 1
                    missed += best is None or best.person_id != ids.get(probe.person)
                else:
                    n_strangers += 1
                    named += best is not None
        finally:
            g.close()
    if point is None:
        raise InputError("no probe could be identified: no face in any probe")
    table = default_open_set(embedded.model_id)
    curve = () if table is None else tuple(
        (n, f) for n in table.sizes
        if (f := identify_point(table, target_fpir, n, n).expected_fnir) is not None
    )  # fmt: skip
    return GalleryDecision(
        target_fpir, point, named / n_strangers if n_strangers else float("nan"),
        missed / n_mated if n_mated else float("nan"), curve,
    )  # fmt: skip


def _group_identification(
    name: str, ranks: Floats, mated: Floats, nonmated: Floats, threshold: float
) -> GroupIdentification:
    fpir, fnir = metrics.rates_at_threshold(mated, nonmated, threshold)
    rank1 = float(np.mean(ranks <= 1)) if ranks.size else float("nan")
    return GroupIdentification(name, int(ranks.size), int(nonmated.size), rank1, fnir, fpir)


def evaluate_identification(
    scores: IdentificationScores,
    embedded: Embedded,
    *,
    targets: Sequence[float] = IDENTIFY_FPIRS,
    groups: Mapping[str, str] | None = None,
    calibration: Calibration | None = None,
    target_fpir: float = 0.01,
    scratch: Path | None = None,
) -> IdentificationResult:
    """Rank-k, CMC and open-set FNIR at FPIR (rank 1) from an identification run, and the
    gallery's own decision at ``target_fpir`` (:func:`gallery_decision`, its throw-away gallery
    under ``scratch``)."""
    _check_model(calibration, embedded.model_id)
    mated = scores.mated
    if not mated.any():
        raise InputError("no probe is of a person in the gallery: nothing to identify")
    mated_probes = [p for p, m in zip(scores.probes, mated) if m]
    searchable = scores.searchable[mated]
    found_rows = scores.matrix[mated][searchable]
    found_persons = [p.person for p, s in zip(mated_probes, searchable) if s]
    ranks = np.full(len(mated_probes), np.inf)
    ranks[searchable] = metrics.mated_ranks(found_rows, scores.persons, found_persons)
    mated_scores = np.full(len(mated_probes), np.nan)
    mated_scores[searchable] = metrics.mated_scores(found_rows, scores.persons, found_persons)
    nonmated_scores = metrics.nonmated_scores(scores.matrix[~mated])
    open_set: tuple[metrics.OperatingPoint, ...] = ()
    threshold, source = float("nan"), "no non-mated searches"
    if nonmated_scores.size:
        curve = metrics.roc(mated_scores, nonmated_scores)
        open_set = tuple(metrics.at_fmr(curve, t) for t in targets)
        threshold, source = metrics.eer(curve).threshold, "FNIR = FPIR threshold"
    check = None
    if calibration is not None:
        threshold, source = calibration.threshold, f"calibration {calibration.describe()}"
        fpir, fnir = metrics.rates_at_threshold(mated_scores, nonmated_scores, threshold)
        check = CalibrationCheck(calibration, fpir, fnir)
    group_results: tuple[GroupIdentification, ...] = ()
    if groups is not None:
        mated_groups = np.array([groups.get(p.person) for p in mated_probes], dtype=object)
        nonmated_probes = [p for p, m in zip(scores.probes, mated) if not m]
        nonmated_groups = np.array([groups.get(p.person) for p in nonmated_probes], dtype=object)
        names = sorted({g for g in [*mated_groups, *nonmated_groups] if g is not None})
        group_results = tuple(
            _group_identification(
                name,
                ranks[mated_groups == name],
                mated_scores[mated_groups == name],
                nonmated_scores[nonmated_groups == name],
                threshold,
            )
            for name in names
        )
    return IdentificationResult(
        model_id=embedded.model_id,
        acquisition=Acquired.of(embedded),
        n_persons=len({e.person for e in scores.gallery}),
        n_enrolled=len(scores.persons),
        n_unenrolled_photos=len(scores.unenrolled),
        ranks=ranks,
        cmc=metrics.cmc(ranks, CMC_RANKS),
        open_set=open_set,
        mated=mated_scores,
        nonmated=nonmated_scores,
        threshold=threshold,
        threshold_source=source,
        groups=group_results,
        calibration=check,
        decision=gallery_decision(scores, embedded, target_fpir, calibration, scratch=scratch),
    )


def identify_lists(
    gallery: Sequence[Entry],
    probes: Sequence[Entry],
    pipeline: Pipeline,
    *,
    groups: Mapping[str, str] | None = None,
    calibration: Calibration | None = None,
    missing_face: MissingFace = MissingFace.COUNT,
    target_fpir: float = 0.01,
    progress: Callable[[], None] | None = None,
    scratch: Path | None = None,
) -> IdentificationResult:
    """Embed the photos both lists name (once each) and evaluate the probes' searches of the
    gallery, checking ``calibration`` (default: the shipped one) on them: the one run behind
    ``visage eval identify`` and ``POST /v1/eval/identify``. ``scratch``: see
    :func:`gallery_decision`."""
    embedded = embed_photos(
        [e.path for e in [*gallery, *probes]],
        pipeline,
        missing_face=missing_face,
        progress=progress,
    )
    return evaluate_identification(
        score_identification(gallery, probes, embedded),
        embedded,
        groups=groups,
        calibration=calibration or shipped_calibration(embedded.model_id),
        target_fpir=target_fpir,
        scratch=scratch,
    )


def require_support(n_impostor: int, target_fmr: float) -> None:
    """Raise :class:`InputError` when ``n_impostor`` pairs are too few to measure ``target_fmr``
    (see :data:`metrics.MIN_EXPECTED_ERRORS`); cheap, so callers can check before embedding."""
    if n_impostor * target_fmr < metrics.MIN_EXPECTED_ERRORS:
        needed = math.ceil(metrics.MIN_EXPECTED_ERRORS / target_fmr)
        raise InputError(
            f"{n_impostor} impostor pairs cannot support FMR {target_fmr:g} "
            f"(at least {needed} are needed): use more pairs (--all-pairs) or --force"
        )


def calibrate(
    scores: VerificationScores,
    embedded: Embedded,
    *,
    target_fmr: float,
    source: str,
    allow_unsupported: bool = False,
) -> Calibration:
    """The calibration record for ``target_fmr``: the threshold of :func:`metrics.at_fmr`.

    Refuses (``InputError``) when too few impostor pairs back the target, unless
    ``allow_unsupported``: a threshold for FMR 1e-3 from 300 impostor pairs is a guess.
    """
    point = metrics.at_fmr(metrics.roc(scores.genuine, scores.impostor), target_fmr)
    if not allow_unsupported:
        require_support(point.n_impostor, target_fmr)
    return Calibration(
        model_id=embedded.model_id,
        threshold=point.threshold,
        method="target-fmr",
        source=f"{source}; FMR {point.fmr:.2g}, TAR {point.tar:.3f} at this threshold",
        created=datetime.now(UTC).date().isoformat(),
        n_genuine=point.n_genuine,
        n_impostor=point.n_impostor,
        target_fmr=target_fmr,
        fnmr=round(1.0 - point.tar, 4),
    )
