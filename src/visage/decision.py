"""One distance primitive under verify, identify and the CLI, and the calibrated thresholds.

Embeddings are L2-normalised float32; the distance is Euclidean on the unit sphere (0 = same
direction, 2 = opposite). Thresholds are never constants in code: they come from a
:class:`Calibration` record that carries the model id it was measured for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import InputError, ModelError

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
    chosen for best accuracy instead); ``n_genuine``/``n_impostor`` say how much data backs it.
    """

    model_id: str
    threshold: float
    method: str
    source: str
    created: str
    n_genuine: int
    n_impostor: int
    target_fmr: float | None = None

    def describe(self) -> str:
        """One line for users: the value and its provenance."""
        goal = f"FMR {self.target_fmr:g}" if self.target_fmr is not None else self.method
        return (
            f"{self.threshold:.4f} ({goal}; {self.source}; "
            f"{self.n_genuine} genuine / {self.n_impostor} impostor pairs)"
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


@lru_cache(maxsize=8)
def default_calibration(model_id: str) -> Calibration:
    """The calibration shipped with Visage for ``model_id`` (see docs/accuracy.md)."""
    text = resources.files("visage").joinpath("data/calibration.json").read_text("utf-8")
    records = {r["model_id"]: r for r in json.loads(text)}
    if model_id not in records:
        raise ModelError(f"no shipped calibration for model {model_id!r}; run `visage calibrate`")
    return Calibration(**records[model_id])


@dataclass(frozen=True)
class Comparison:
    """The answer to 'is this the same person?': distance, decision, and the threshold used."""

    distance: float
    same: bool
    threshold: float
    threshold_source: str


def decide(dist: float, calibration: Calibration) -> Comparison:
    """Apply a calibration to a distance: same person when ``dist <= threshold``."""
    return Comparison(
        distance=dist,
        same=dist <= calibration.threshold,
        threshold=calibration.threshold,
        threshold_source=calibration.describe(),
    )
