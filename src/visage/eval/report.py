"""A self-contained HTML report of an evaluation: tables and figures (PNG, base64) in one file.

The file needs nothing beside it to open, so it can be mailed or archived with the deployment
it describes. Every string from the user's data is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from .. import __version__
from . import metrics
from .results import (
    MAX_MISSES,
    Acquired,
    CalibrationCheck,
    IdentificationResult,
    VerificationResult,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warn { color: #a33; } figure { display: inline-block; margin: 0.5em; }
figcaption { text-align: center; color: #555; }
"""

_GROUPS_NOTE = (
    "Groups come from the table the user supplied; Visage never infers them from photos. "
    "Each group's false-match rate is measured at one threshold shared by all groups "
    "(NISTIR 8280): a ratio above 1 means more false matches than overall."
)


def _groups_note(threshold: float, source: str) -> str:
    return f"<p>{html.escape(_GROUPS_NOTE)} Threshold {threshold:.4f} ({html.escape(source)}).</p>"


def format_rate(value: float) -> str:
    """A rate to four decimals, ``-`` where it is undefined (NaN: nothing to measure it on)."""
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(figures: Mapping[str, bytes]) -> str:
    return "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{html.escape(name)}</figcaption>'
        "</figure>"
        for name, png in figures.items()
    )


def _acquisition(acquired: Acquired) -> str:
    return _table(
        ["photos", "no face detected", "failure-to-acquire rate", "policy"],
        [
            [
                str(acquired.photos),
                str(acquired.no_face),
                format_rate(acquired.rate),
                acquired.policy,
            ]
        ],
    )


def operating_point_headers(fmr: str, fnmr: str) -> list[str]:
    """Column names of an operating-point table (``FMR``/``FNMR`` or ``FPIR``/``FNIR``)."""
    return [f"target {fmr}", "threshold", fmr, f"1 - {fnmr}", fnmr, "non-mated", "supported"]


def operating_point_cells(point: metrics.OperatingPoint) -> list[str]:
    """One row of an operating-point table, shared by the report and the CLI."""
    return [
        f"{point.target_fmr:g}",
        f"{point.threshold:.4f}",
        format_rate(point.fmr),
        format_rate(point.tar),
        format_rate(point.fnmr),
        str(point.n_impostor),
        "yes" if point.supported else "no (too few)",
    ]


def _operating_points(points: Sequence[metrics.OperatingPoint], fmr: str, fnmr: str) -> str:
    note = (
        f"<p>The threshold is the largest whose {fmr} on this data does not exceed the target. "
        f"A figure is supported when at least {metrics.MIN_EXPECTED_ERRORS:g} / target "
        "non-mated comparisons back it; below that it is an optimistic extrapolation.</p>"
    )
    rows = [operating_point_cells(p) for p in points]
    return note + _table(operating_point_headers(fmr, fnmr), rows)


def _calibration(check: CalibrationCheck, fmr: str, fnmr: str) -> str:
    headers, cells = [fmr, fnmr], [format_rate(check.fmr), format_rate(check.fnmr)]
    if check.accuracy is not None:
        headers.append("accuracy")
        cells.append(format_rate(check.accuracy))
    return (
        "<h3>Saved calibration on this data</h3>"
        f"<p>{html.escape(check.calibration.describe())}</p>{_table(headers, [cells])}"
    )


def _verification(result: VerificationResult) -> str:
    kfold, summary = result.kfold, result.summary
    parts = [
        f"<h2>Verification: {html.escape(result.protocol)}</h2>",
        "<h3>Failure to acquire</h3>",
        _acquisition(result.acquisition),
        "<h3>Accuracy</h3>",
        "<p>Each fold is tested at the threshold of best accuracy on the other folds.</p>",
        _table(
            ["fold", "accuracy", "threshold"],
            [
                [str(i + 1), format_rate(a), f"{t:.4f}"]
                for i, (a, t) in enumerate(zip(kfold.accuracies, kfold.thresholds))
            ]
            + [["mean ± std", f"{kfold.mean:.4f} ± {kfold.std:.4f}", ""]]
            + [["standard error", format_rate(kfold.standard_error), ""]],
        ),
        "<h3>Error rates</h3>",
        _table(
            ["genuine pairs", "impostor pairs", "ROC AUC", "EER", "EER threshold"],
            [
                [
                    str(summary.n_genuine),
                    str(summary.n_impostor),
                    format_rate(summary.auc),
                    format_rate(summary.eer.rate),
                    f"{summary.eer.threshold:.4f}",
                ]
            ],
        ),
        _operating_points(summary.operating_points, "FMR", "FNMR"),
    ]
    if result.calibration is not None:
        parts.append(_calibration(result.calibration, "FMR", "FNMR"))
    shown = result.misses[:MAX_MISSES]
    total = result.summary.n_genuine + result.summary.n_impostor
    cut = f", the first {len(shown)} shown" if len(shown) < len(result.misses) else ""
    note = (
        f"<p>{len(result.misses)} of {total} pairs ({html.escape(result.threshold_source)}); "
        f"the furthest from the threshold first{cut}. A genuine pair without a distance had a "
        "photo with no face.</p>"
    )
    parts += [
        f"<h3>Pairs decided wrongly at {result.threshold:.4f}</h3>",
        note,
        _table(
            ["photo a", "photo b", "pair", "distance"],
            [
                [
                    str(m.pair.a),
                    str(m.pair.b),
                    "same person" if m.pair.same else "different people",
                    f"{m.distance:.4f}" if math.isfinite(m.distance) else "no face",
                ]
                for m in shown
            ],
        ),
    ]
    if result.groups:
        parts += [
            "<h3>By group</h3>",
            _groups_note(result.threshold, result.threshold_source),
            _table(
                ["group", "genuine", "impostor", "FMR", "FNMR", "FMR / overall", "AUC", "EER"],
                [
                    [
                        g.rates.group,
                        str(g.rates.n_genuine),
                        str(g.rates.n_impostor),
                        format_rate(g.rates.fmr),
                        format_rate(g.rates.fnmr),
                        format_rate(g.rates.fmr_ratio),
                        format_rate(g.summary.auc) if g.summary else "-",
                        format_rate(g.summary.eer.rate) if g.summary else "-",
                    ]
                    for g in result.groups
                ],
            ),
        ]
    return "".join(parts)


def _identification(result: IdentificationResult) -> str:
    parts = [
        "<h2>Identification</h2>",
        "<h3>Failure to acquire</h3>",
        _acquisition(result.acquisition),
        _table(
            ["persons", "enrolled", "gallery photos not enrolled", "mated", "non-mated"],
            [
                [
                    str(result.n_persons),
                    str(result.n_enrolled),
                    str(result.n_unenrolled_photos),
                    str(result.ranks.size),
                    str(result.nonmated.size),
                ]
            ],
        ),
        "<h3>Closed set (mated searches)</h3>",
        _table(
            ["rank 1", "rank 5", "rank 10"],
            [
                [
                    format_rate(result.rank(1)),
                    format_rate(result.rank(5)),
                    format_rate(result.rank(10)),
                ]
            ],
        ),
    ]
    if result.calibration is not None:
        parts.append(_calibration(result.calibration, "FPIR", "FNIR"))
    if result.open_set:
        parts += [
            "<h3>Open set (rank 1)</h3>",
            _operating_points(result.open_set, "FPIR", "FNIR"),
        ]
    if result.groups:
        parts += [
            "<h3>By group</h3>",
            _groups_note(result.threshold, result.threshold_source),
            _table(
                ["group", "mated", "non-mated", "rank 1", "FNIR", "FPIR"],
                [
                    [
                        g.group,
                        str(g.n_mated),
                        str(g.n_nonmated),
                        format_rate(g.rank1),
                        format_rate(g.fnir),
                        format_rate(g.fpir),
                    ]
                    for g in result.groups
                ],
            ),
        ]
    return "".join(parts)


def html_report(
    result: VerificationResult | IdentificationResult, figures: Mapping[str, bytes]
) -> str:
    """The whole report as one HTML document."""
    body = (
        _verification(result) if isinstance(result, VerificationResult) else _identification(result)
    )
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Visage evaluation</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Visage evaluation</h1>"
        f"<p>Model {html.escape(result.model_id)}; Visage {html.escape(__version__)}; "
        f"{created}. Distances: lower is more similar; a pair matches at or below the "
        "threshold.</p>"
        f"{body}<h2>Figures</h2>{_figures(figures)}</body></html>\n"
    )
