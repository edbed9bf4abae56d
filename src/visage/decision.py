"""One distance primitive under verify, identify and the CLI, and the calibrated thresholds.

Embeddings are L2-normalised float32; the distance is Euclidean on the unit sphere (0 = same
direction, 2 = opposite). Thresholds are never constants in code: they come from a
:class:`Calibration` record that carries the model id it was measured for.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InputError, ModelError
from .models.base import model_family

Vector = npt.NDArray[np.float32]


def normalize(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """L2-normalise rows (or one vector) in float64; zero vectors are returned unchanged.

    Each row is first divided by its largest magnitude, so its norm lies in [1, sqrt(d)]:
    float32 inputs such as ``[3e38] * 128`` (norm overflows) or ``[1e-45] * 128`` (norm
    underflows) still come out as unit vectors instead of zeros.
    """
    arr = np.asarray(vectors, dtype=np.float64)
    peak = np.max(np.abs(arr), axis=-1, keepdims=True) if arr.size else np.ones_like(arr)
    scaled = np.divide(arr, peak, out=np.zeros_like(arr), where=peak > 0)
    norms = np.linalg.norm(scaled, axis=-1, keepdims=True)
    unit = np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0)
    out: npt.NDArray[np.float32] = unit.astype(np.float32)
    return out


def unit_embedding(raw: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """The one embedding check: ``dim`` finite values, not all zero, returned L2-normalised.

    Every embedding that enters a decision or the store (enrolled, imported, or sent as a
    probe) passes here; :class:`InputError` says what is wrong otherwise.
    """
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("an embedding is a list of numbers") from None
    if arr.shape != (dim,):
        raise InputError(f"embedding shape {arr.shape}; expected ({dim},)")
    if not np.isfinite(arr).all():
        raise InputError("embedding must be finite and non-zero: it holds NaN or infinity")
    unit = normalize(arr)
    if not np.isfinite(unit).all() or not np.any(unit):
        raise InputError("embedding must be finite and non-zero: every value is 0")
    return unit


def distances(query: npt.ArrayLike, candidates: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Distances from ``query (d,)`` to each row of ``candidates (n, d)``, both normalised.

    Computed from the dot product (one BLAS call) as ``sqrt(2 - 2 cos)``, clipped to [0, 2].
    A non-finite result (a corrupt stored vector) becomes 2, the largest distance there is, so
    no caller ever sees NaN and such a vector can never match.
    """
    q = np.asarray(query, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32).reshape(-1, q.shape[-1])
    with np.errstate(invalid="ignore", over="ignore"):
        cos = c @ q
        dist = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))
    out: npt.NDArray[np.float32] = np.where(np.isfinite(dist), dist, 2.0).astype(np.float32)
    return out


def distance(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Distance between two normalised embeddings; see :func:`distances`."""
    return float(distances(a, np.asarray(b)[None, :])[0])


@dataclass(frozen=True)
class Calibration:
    """A decision threshold and where it came from.

    ``threshold`` is a distance: pairs at or below it are judged the same person.
    ``target_fmr`` is the false-match rate the threshold was chosen for (``None`` when it was
    chosen for best accuracy instead); ``n_genuine``/``n_impostor`` say how much data backs it;
    ``fnmr`` is the share of its genuine pairs the threshold rejects (``None``: not recorded).
    """

    model_id: str
    threshold: float
    method: str
    source: str
    created: str
    n_genuine: int
    n_impostor: int
    target_fmr: float | None = None
    fnmr: float | None = None

    @property
    def ref(self) -> str:
        """A short name for this record, ``model@created``: what answers carry, so the full
        provenance (:meth:`provenance`, ``GET /v1/calibrations/{model}``) is one request away
        instead of 200 characters in every response."""
        return f"{self.model_id}@{self.created}"

    def describe(self) -> str:
        """One short line for answers: the value, its goal and the record's :attr:`ref`."""
        goal = f"FMR {self.target_fmr:g}" if self.target_fmr is not None else self.method
        return f"{self.threshold:.4f} ({goal}; calibration {self.ref})"

    def provenance(self) -> str:
        """The whole story, for reports and the calibration route: data and pair counts."""
        return (
            f"{self.describe()}: {self.source}; "
            f"{self.n_genuine} genuine / {self.n_impostor} impostor pairs"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid calibration record: {exc}") from exc


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration record written by ``visage calibrate`` (or :meth:`Calibration.to_json`)."""
    try:
        return Calibration.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read calibration {path}: {exc}") from exc


def _shipped(name: str, model_id: str) -> dict[str, Any] | None:
    """The record of ``data/<name>`` for ``model_id`` itself, else for its family, else ``None``.

    A variant that changes the descriptors' distribution ships its own record: mirrored-chip
    averaging (``+flip``) moves the FMR-1e-3 threshold from 0.3764 to 0.3692 on the same pairs,
    and at 0.3764 its false-match rate is 1.4x the default pipeline's (docs/accuracy.md)."""
    text = resources.files("visage").joinpath(f"data/{name}").read_text("utf-8")
    records = {r["model_id"]: r for r in json.loads(text)}
    found: dict[str, Any] | None = records.get(model_id) or records.get(model_family(model_id))
    return found


@lru_cache(maxsize=8)
def default_calibration(model_id: str) -> Calibration:
    """The calibration shipped with Visage for ``model_id`` (see :func:`_shipped` and
    docs/accuracy.md)."""
    record = _shipped("calibration.json", model_id)
    if record is None:
        raise ModelError(f"no shipped calibration for model {model_id!r}; run `visage calibrate`")
    return Calibration(**record)


@dataclass(frozen=True)
class Comparison:
    """The answer to 'is this the same person?': distance, decision, and the threshold used,
    with the FMR it was chosen for and the FNMR its calibration measured there."""

    distance: float
    same: bool
    threshold: float
    threshold_source: str
    target_fmr: float | None = None
    expected_fnmr: float | None = None


def decide(dist: float, calibration: Calibration) -> Comparison:
    """Apply a calibration to a distance: same person when ``dist <= threshold``."""
    return Comparison(
        distance=dist,
        same=dist <= calibration.threshold,
        threshold=calibration.threshold,
        threshold_source=calibration.describe(),
        target_fmr=calibration.target_fmr,
        expected_fnmr=calibration.fnmr,
    )


@dataclass(frozen=True)
class OpenSetCalibration:
    """A model's impostor distances, from which identify derives a threshold for a target FPIR.

    ``fmr``: ``(per-comparison FMR, distance)`` rows, ascending, each backed by at least
    :data:`MIN_TAIL_COUNT` of the ``n_impostor`` pairs; ``tail``: ``(a, b)`` of the exponential
    tail ``log10 FMR = a + b * distance`` fitted to the lowest rows, used below them.
    ``rank1[i][j]``: the distance at which a stranger's nearest of ``sizes[i]`` random
    templates falls at or below it with probability ``fpirs[j]`` (measured over ``n_probes``
    strangers, each against every random gallery of that size, see benchmarks/open_set.py).
    ``margin[i][j]``: the :func:`margin_score` a stranger's two nearest of ``sizes[i]`` random
    persons reach with probability ``fpirs[j]``; ``fnir[i][j]``: the share of the calibration's
    mated probes that rule misses (sampled, 256 galleries per probe and size).
    """

    model_id: str
    source: str
    created: str
    n_impostor: int
    n_probes: int
    fmr: tuple[tuple[float, float], ...]
    tail: tuple[float, float]
    sizes: tuple[int, ...]
    fpirs: tuple[float, ...]
    rank1: tuple[tuple[float, ...], ...]
    margin: tuple[tuple[float, ...], ...] = ()
    fnir: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def from_dict(cls, record: dict[str, object]) -> OpenSetCalibration:
        try:
            r: dict[str, Any] = dict(record)
            return cls(
                model_id=str(r["model_id"]),
                source=str(r["source"]),
                created=str(r["created"]),
                n_impostor=int(r["n_impostor"]),
                n_probes=int(r["n_probes"]),
                fmr=tuple((float(f), float(d)) for f, d in r["fmr"]),
                tail=(float(r["tail"][0]), float(r["tail"][1])),
                sizes=tuple(int(n) for n in r["sizes"]),
                fpirs=tuple(float(f) for f in r["fpirs"]),
                rank1=_table(r["rank1"]),
                margin=_table(r.get("margin", ())),
                fnir=_table(r.get("fnir", ())),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"invalid open-set calibration record: {exc}") from exc


def _table(rows: Any) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in rows)


MARGIN_WEIGHT = 0.5
"""identify names its nearest person when ``s1 - 0.5 * s2`` (cosine similarities of the nearest
and second-nearest persons) clears the calibrated score: a stranger who resembles many people is
close to several, a mated probe to one. At 1,000 persons and FPIR 1% it misses 0.37 of mated
probes where the nearest distance alone misses 0.56 (docs/accuracy.md, issue 16)."""


def similarity(dist: float) -> float:
    """Cosine similarity of two unit vectors at Euclidean ``dist``: ``1 - dist^2 / 2``."""
    return 1.0 - dist * dist / 2.0


def margin_score(best: float, second: float | None) -> float:
    """identify's score from the nearest and second-nearest persons' distances (``None``: a
    gallery of one person, scored by the nearest alone); higher is more likely a match."""
    return similarity(best) - (0.0 if second is None else MARGIN_WEIGHT * similarity(second))


MIN_TAIL_COUNT = 10
"""Observations (impostor pairs, or named strangers) a calibrated rate needs to be 'supported'."""

FPIR_RANGE = (1e-6, 0.5)
"""The target FPIRs a collection may have."""


@dataclass(frozen=True)
class OpenSetPoint:
    """The operating point of an identify answer: the threshold that holds ``target_fpir`` for
    a gallery of ``templates`` templates (``persons`` persons), and how it was derived.

    ``basis``: ``measured`` (the rank-1 stranger distances of the calibration set at this
    size), ``bound`` (per-comparison FMR through FPIR = 1 - (1 - FMR)^n, an upper bound on
    FPIR, used beyond the measured sizes), ``extrapolated`` (the bound on the fitted tail, below
    any measured pair: ``supported`` is False) or ``fixed`` (no open-set calibration for the
    model: the per-comparison threshold, ``supported`` False).

    ``margin``: where set (basis ``measured``), the nearest person is named when
    :func:`margin_score` reaches it, so each probe's distance bar is :meth:`threshold_for` its
    second-nearest person, never looser than ``ceiling`` (the bar for a gallery of one person);
    ``threshold`` is then the nearest-distance rule's bar, used when there is no second person.
    ``expected_fnir``: the calibration's miss rate at this point (``None``: not measured).
    """

    target_fpir: float
    persons: int
    templates: int
    threshold: float
    supported: bool
    basis: str
    margin: float | None = None
    ceiling: float | None = None
    expected_fnir: float | None = None

    def threshold_for(self, second: float | None) -> float:
        """The distance the nearest person must be within when the second-nearest is at
        ``second`` (``None``: there is none, so the nearest-distance rule's ``threshold``)."""
        if self.margin is None or self.ceiling is None or second is None:
            return self.threshold
        room = 2.0 - 2.0 * (self.margin + MARGIN_WEIGHT * similarity(second))
        return round(min(self.ceiling, math.sqrt(max(0.0, room))), 6)

    def describe(self) -> str:
        """One line for users, e.g. ``FPIR 0.01 at 460 templates: 0.3102 (measured)``."""
        support = "" if self.supported else ", not supported by the calibration data"
        bar = f"{self.threshold:.4f}" if self.margin is None else f"margin {self.margin:.4f}"
        return (
            f"FPIR {self.target_fpir:g} at {self.templates} templates: {bar} "
            f"({self.basis}{support})"
        )


def open_set_threshold(
    cal: OpenSetCalibration, target_fpir: float, templates: int, persons: int
) -> OpenSetPoint:
    """The distance threshold holding ``target_fpir`` for a gallery of ``templates`` templates.

    Within the measured sizes and FPIRs it interpolates the rank-1 table (log size, log FPIR).
    Elsewhere it asks each comparison for FMR = 1 - (1 - target)^(1/n): an upper bound on FPIR,
    because strangers differ (some resemble many people) and 1 - (1 - x)^n is concave in x.
    Below the lowest measured FMR it uses the fitted exponential tail; the impostor tail falls
    faster than exponential (Gaussian-like in cosine), so this over-states FMR: a tighter
    threshold than needed, flagged ``supported=False``.
    """
    n = max(1, templates)
    measured = (
        n <= cal.sizes[-1]
        and cal.fpirs[0] <= target_fpir <= cal.fpirs[-1]
        and target_fpir * cal.n_probes >= MIN_TAIL_COUNT
    )
    if measured:
        thr = _interpolate(cal, cal.rank1, target_fpir, n)
        return OpenSetPoint(target_fpir, persons, templates, round(thr, 6), True, "measured")
    fmr = -math.expm1(math.log1p(-target_fpir) / n)
    rates = np.log10([f for f, _ in cal.fmr])
    dists = np.asarray([d for _, d in cal.fmr], np.float64)
    if fmr >= cal.fmr[0][0]:
        thr = float(np.interp(math.log10(fmr), rates, dists))
        return OpenSetPoint(target_fpir, persons, templates, round(thr, 6), True, "bound")
    a, b = cal.tail
    thr = min(float(dists[0]), max(0.0, (math.log10(fmr) - a) / b))
    return OpenSetPoint(target_fpir, persons, templates, round(thr, 6), False, "extrapolated")


def _interpolate(
    cal: OpenSetCalibration, table: tuple[tuple[float, ...], ...], target_fpir: float, n: int
) -> float:
    """``table[size][fpir]`` read at ``n`` and ``target_fpir`` (linear in log size, log FPIR)."""
    levels = np.log(np.asarray(cal.fpirs, np.float64))
    per_size = [float(np.interp(math.log(target_fpir), levels, row)) for row in table]
    return float(np.interp(math.log(n), np.log(np.asarray(cal.sizes, np.float64)), per_size))


def identify_point(
    cal: OpenSetCalibration, target_fpir: float, templates: int, persons: int
) -> OpenSetPoint:
    """identify's operating point: :func:`open_set_threshold`'s nearest-distance bar and, where
    that is measured and the calibration sampled margin scores, the margin rule
    (:data:`MARGIN_WEIGHT`) with its ceiling and expected FNIR. Beyond the sampled sizes the
    nearest-distance bound alone decides (stricter: it ignores the second person)."""
    plain = open_set_threshold(cal, target_fpir, templates, persons)
    if plain.basis != "measured" or not cal.margin:
        return plain
    n = max(1, templates)
    fnir = round(_interpolate(cal, cal.fnir, target_fpir, n), 4) if cal.fnir else None
    return replace(
        plain,
        margin=round(_interpolate(cal, cal.margin, target_fpir, n), 6),
        ceiling=round(_interpolate(cal, cal.rank1, target_fpir, 1), 6),
        expected_fnir=fnir,
    )


@lru_cache(maxsize=8)
def default_open_set(model_id: str) -> OpenSetCalibration | None:
    """The open-set calibration shipped for ``model_id`` (data/open_set.json; see
    :func:`_shipped`), if any."""
    record = _shipped("open_set.json", model_id)
    return None if record is None else OpenSetCalibration.from_dict(record)
