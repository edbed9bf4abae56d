"""Evaluation figures as PNG bytes: ROC, DET, mated / non-mated histograms and CMC.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so nothing
touches pyplot's global state or needs a display; callers write the bytes to files or embed
them in the HTML report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter

from .metrics import Floats, Roc
from .results import IdentificationResult, VerificationResult

_STANDARD_NORMAL = NormalDist()
#: Rates are clipped into [_EDGE, 1 - _EDGE] on normal-deviate axes, where 0 and 1 are infinite.
_EDGE = 1e-6
_DET_TICKS = [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5, 0.8]


def _probit(p: npt.ArrayLike) -> Floats:
    clipped = np.clip(np.asarray(p, dtype=np.float64), _EDGE, 1.0 - _EDGE)
    deviates: Floats = np.vectorize(_STANDARD_NORMAL.inv_cdf, otypes=[np.float64])(clipped)
    return deviates


def _normal_cdf(x: npt.ArrayLike) -> Floats:
    rates: Floats = np.vectorize(_STANDARD_NORMAL.cdf, otypes=[np.float64])(
        np.asarray(x, np.float64)
    )
    return rates


def _new_axes(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(5.5, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _rate_label(value: float, _position: float = 0.0) -> str:
    return f"{value:.4g}" if value < 0.01 else f"{value:.0%}" if value >= 0.05 else f"{value:.2g}"


def roc_png(curves: Mapping[str, Roc]) -> bytes:
    """TAR against FMR on a log FMR axis, one line per named curve."""
    figure, axes = _new_axes("ROC")
    for name, curve in curves.items():
        keep = curve.fmr > 0
        axes.step(curve.fmr[keep], curve.tar[keep], where="post", label=name)
    axes.set_xscale("log")
    axes.set_xlim(0.5 / max(c.n_impostor for c in curves.values()), 1.0)
    axes.set_xlabel("false match rate (FMR)")
    axes.set_ylabel("true accept rate (1 - FNMR)")
    axes.set_ylim(0.0, 1.01)
    axes.legend(loc="lower right")
    return _png(figure)


def det_png(curves: Mapping[str, Roc], *, scale: Literal["log", "normal"] = "log") -> bytes:
    """:func:`det_figure` as PNG bytes."""
    return _png(det_figure(curves, scale=scale))


def det_figure(curves: Mapping[str, Roc], *, scale: Literal["log", "normal"] = "log") -> Figure:
    """Detection error trade-off: FNMR against FMR, both axes log (NIST FRTE's convention) or
    normal deviates (Martin et al. 1997, where normal score distributions draw straight lines).

    A rate of 0 has no place on either scale: such points are drawn on the axis floor (half
    the smallest rate the data can measure, one error among all comparisons), dotted, and the
    legend says so, so a small pairs file still shows its curve.
    """
    figure, axes = _new_axes("DET")
    floor_x = 0.5 / max(c.n_impostor for c in curves.values())
    floor_y = 0.5 / max(c.n_genuine for c in curves.values())
    if scale == "normal":
        floor_x = floor_y = _DET_TICKS[0]
    for name, curve in curves.items():
        measured = (curve.fmr > 0) & (curve.fnmr > 0)
        line = axes.step(curve.fmr[measured], curve.fnmr[measured], where="post", label=name)
        zero = ~measured & ((curve.fmr > 0) | (curve.fnmr > 0))
        if zero.any():
            x = np.where(curve.fmr[zero] > 0, curve.fmr[zero], floor_x)
            y = np.where(curve.fnmr[zero] > 0, curve.fnmr[zero], floor_y)
            axes.plot(
                x,
                y,
                linestyle=":",
                marker=".",
                color=line[0].get_color(),
                label=f"{name}: a rate of 0, drawn on the axis floor ({zero.sum()} thresholds)",
            )
    if scale == "log":
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(floor_x * 0.8, 1.0)
        axes.set_ylim(floor_y * 0.8, 1.0)
    else:
        axes.set_xscale("function", functions=(_probit, _normal_cdf))
        axes.set_yscale("function", functions=(_probit, _normal_cdf))
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_locator(FixedLocator(_DET_TICKS))
            axis.set_major_formatter(FuncFormatter(_rate_label))
        axes.set_xlim(_DET_TICKS[0], _DET_TICKS[-1])
        axes.set_ylim(_DET_TICKS[0], _DET_TICKS[-1])
    axes.set_xlabel("false match rate (FMR)")
    axes.set_ylabel("false non-match rate (FNMR)")
    axes.legend(loc="upper right", fontsize="small")
    return figure


def histogram_png(
    mated: npt.ArrayLike,
    nonmated: npt.ArrayLike,
    *,
    threshold: float | None = None,
    labels: tuple[str, str] = ("mated (same person)", "non-mated"),
) -> bytes:
    """Counts of mated and non-mated distances, with the decision threshold if given.

    Only finite distances are drawn (failures to acquire and misses have none); each side's
    count is in its legend entry. Counts, not densities: what a reader expects on the y-axis.
    """
    figure, axes = _new_axes("Distances")
    sides = [np.asarray(v, dtype=np.float64) for v in (mated, nonmated)]
    finite = [v[np.isfinite(v)] for v in sides]
    pooled = np.concatenate(finite)
    bins: int | list[float] = (
        np.linspace(pooled.min(), pooled.max(), 50).tolist() if pooled.size else 10
    )
    for values, label, colour in zip(finite, labels, ("tab:green", "tab:red")):
        axes.hist(values, bins=bins, alpha=0.5, label=f"{label}: {values.size}", color=colour)
    if threshold is not None and math.isfinite(threshold):
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set_xlabel("distance (lower = more similar)")
    axes.set_ylabel("count")
    axes.legend(loc="upper right")
    return _png(figure)


def cmc_png(cmc: npt.ArrayLike) -> bytes:
    """Cumulative match characteristic: identification rate against rank."""
    values = np.asarray(cmc, dtype=np.float64)
    figure, axes = _new_axes("CMC")
    ranks = np.arange(1, values.size + 1)
    axes.plot(ranks, values, marker="o")
    axes.set_xlabel("rank")
    axes.set_ylabel("identification rate")
    axes.set_xticks(ranks if values.size <= 20 else np.linspace(1, values.size, 10, dtype=int))
    axes.set_ylim(min(0.9, float(values.min()) - 0.02), 1.005)
    return _png(figure)


def size_curve_png(
    sizes: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    title: str = "Open-set rates against gallery size",
    marks: Mapping[str, tuple[int, float]] | None = None,
) -> bytes:
    """Rates (FPIR, FNIR) of each named series against the number of persons enrolled (log
    axes); ``marks`` draws single measured points (e.g. this run's gallery) on top. Series
    whose name starts with ``FPIR`` are dashed, so the two kinds of error read apart."""
    figure, axes = _new_axes(title)
    for name, values in series.items():
        style = "--" if name.startswith("FPIR") else "-"
        axes.plot(sizes, values, style, marker="o", markersize=3, label=name)
    for name, (n, rate) in (marks or {}).items():
        axes.plot([n], [max(rate, _EDGE)], "k*", markersize=10, label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g}%"))
    axes.set_xlabel("persons enrolled (N)")
    axes.set_ylabel("rate")
    axes.legend(loc="best", fontsize="small")
    return _png(figure)


def verification_figures(result: VerificationResult) -> dict[str, bytes]:
    """The PNGs of a verification evaluation, by file stem: ROC, DET and histogram; per-group
    curves are drawn beside the overall one when groups were given."""
    curves = {"overall": result.summary.roc} | {
        f"group {g.rates.group}": g.summary.roc for g in result.groups if g.summary is not None
    }
    return {
        "roc": roc_png(curves),
        "det": det_png(curves),
        "scores": histogram_png(result.genuine, result.impostor, threshold=result.threshold),
    }


def identification_figures(result: IdentificationResult) -> dict[str, bytes]:
    """The PNGs of an identification evaluation, by file stem: CMC and the distances of mated
    searches to their mate beside non-mated searches' nearest candidate."""
    figures = {"cmc": cmc_png(result.cmc)}
    decision = result.decision
    if decision is not None and decision.curve:
        sizes = [n for n, _ in decision.curve]
        n = decision.point.persons
        series = {
            "FNIR expected (calibration)": [f for _, f in decision.curve],
            f"FPIR target {decision.target_fpir:g}": [decision.target_fpir] * len(sizes),
        }
        marks = {
            f"FNIR measured here (N={n})": (n, decision.fnir),
            f"FPIR measured here (N={n})": (n, decision.fpir),
        }
        figures["operating_curve"] = size_curve_png(
            sizes, series, title="The gallery's decision against its size", marks=marks
        )
    if result.nonmated.size:
        figures["search_scores"] = histogram_png(
            result.mated,
            result.nonmated,
            threshold=result.threshold,
            labels=("mated: distance to mate (rank 1)", "non-mated: nearest candidate"),
        )
    return figures
