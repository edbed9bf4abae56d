"""``visage eval verify | identify`` and ``visage calibrate``: thin shells over :mod:`visage.eval`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..errors import InputError
from .app import app
from .gallery import DbOpt
from .options import DetectorOpt, JsonOpt, PlainTable, UpsampleOpt, console, emit_json
from .options import table as new_table
from .progress import progress_bar

if TYPE_CHECKING:  # the eval code (numpy, matplotlib) is imported where used: a fast --help
    from ..eval import metrics
    from ..eval.protocols import Embedded, MissingFace
    from ..eval.results import (
        Acquired,
        CalibrationCheck,
        IdentificationResult,
        VerificationResult,
    )
    from ..pipeline import Pipeline

eval_app = typer.Typer(
    help="Measure error rates on labelled photos: verification pairs or identification.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

RootOpt = Annotated[
    Path | None,
    typer.Option("--root", help="Folder the protocol's photo paths are relative to."),
]
GroupsOpt = Annotated[
    Path | None,
    typer.Option(
        "--groups",
        help="A user-supplied 'person,group' CSV: report every figure per group too.",
    ),
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Write a self-contained HTML report here.")
]
PlotsOpt = Annotated[Path | None, typer.Option("--plots", help="Write the PNG figures here.")]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="A calibration record to evaluate on this data (default: the one Visage ships).",
    ),
]
NoFace = Literal["count", "centre"]
"""The values of :class:`visage.eval.protocols.MissingFace`, spelt out so that the option is
declared without importing the eval code (a test keeps the two equal)."""
NoFaceOpt = Annotated[
    NoFace,
    typer.Option(
        "--no-face",
        help="A photo with no face detected: 'count' it as an error, or embed its 'centre' box.",
    ),
]
TtaOpt = Annotated[bool, typer.Option(help="Average with the mirrored chip.")]


@contextmanager
def _embedding(
    total: int, *, detector: str, upsample: int, tta: bool, quiet: bool
) -> Iterator[tuple[Pipeline, Callable[[], None]]]:
    """The pipeline for the options and a progress bar over ``total`` photos."""
    from ..api import pipeline as get_pipeline

    pipe = get_pipeline(detector, upsample, tta)
    with progress_bar("embedding", total=total, enabled=not quiet) as advance:
        yield pipe, advance


def _embed(
    paths: Iterable[Path],
    *,
    detector: str,
    upsample: int,
    tta: bool,
    missing_face: MissingFace,
    quiet: bool,
) -> Embedded:
    from ..eval.protocols import embed_photos

    unique = list(dict.fromkeys(paths))
    with _embedding(len(unique), detector=detector, upsample=upsample, tta=tta, quiet=quiet) as (
        pipe,
        advance,
    ):
        return embed_photos(unique, pipe, missing_face=missing_face, progress=advance)


def _write(
    result: VerificationResult | IdentificationResult,
    figures: Mapping[str, bytes],
    report: Path | None,
    plots_dir: Path | None,
) -> list[str]:
    """Write the report and the PNGs asked for; returns the paths written."""
    from ..eval.report import html_report

    written: list[Path] = []
    try:
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            for name, png in figures.items():
                (plots_dir / f"{name}.png").write_bytes(png)
                written.append(plots_dir / f"{name}.png")
        if report is not None:
            report.write_text(html_report(result, figures), encoding="utf-8")
            written.append(report)
    except OSError as exc:
        raise InputError(f"cannot write output: {exc}") from exc
    return [str(p) for p in written]


def _acquisition_line(acquired: Acquired, model_id: str) -> str:
    handled = "counted as errors" if acquired.policy == "count" else "centre box used"
    return (
        f"model {model_id}; {acquired.photos} photos, {acquired.no_face} with no face detected "
        f"(failure to acquire {acquired.rate:.2%}, {handled})"
    )


def _points_table(points: Iterable[metrics.OperatingPoint], fmr: str, fnmr: str) -> PlainTable:
    from ..eval.report import operating_point_cells, operating_point_headers

    table = new_table(*operating_point_headers(fmr, fnmr))
    for point in points:
        table.add_row(*operating_point_cells(point))
    return table


def _print_calibration(check: CalibrationCheck, fmr: str, fnmr: str) -> None:
    from ..eval.report import format_rate

    rates = f"{fmr} {format_rate(check.fmr)}, {fnmr} {format_rate(check.fnmr)}"
    if check.accuracy is not None:
        rates += f", accuracy {format_rate(check.accuracy)}"
    console.print(
        f"calibration {check.calibration.provenance()}: {rates} on this data", markup=False
    )


def _print_verification(result: VerificationResult) -> None:
    from ..eval.report import format_rate

    kfold, summary = result.kfold, result.summary
    console.print(_acquisition_line(result.acquisition, result.model_id), markup=False)
    console.print(
        f"accuracy {kfold.mean:.4f} ± {kfold.std:.4f} over {len(kfold.accuracies)} folds "
        f"(standard error {kfold.standard_error:.4f}); ROC AUC {summary.auc:.4f}; "
        f"EER {summary.eer.rate:.4f} at {summary.eer.threshold:.4f}",
        markup=False,
    )
    console.print(_points_table(summary.operating_points, "FMR", "FNMR"))
    if result.calibration is not None:
        _print_calibration(result.calibration, "FMR", "FNMR")
    if result.groups:
        table = new_table("group", "genuine", "impostor", "FMR", "FNMR", "FMR / overall")
        for g in result.groups:
            r = g.rates
            table.add_row(
                r.group,
                str(r.n_genuine),
                str(r.n_impostor),
                format_rate(r.fmr),
                format_rate(r.fnmr),
                format_rate(r.fmr_ratio),
            )
        console.print(f"by group at {result.threshold:.4f} ({result.threshold_source}):")
        console.print(table)


def _print_identification(result: IdentificationResult) -> None:
    from ..eval.report import format_rate

    console.print(_acquisition_line(result.acquisition, result.model_id), markup=False)
    console.print(
        f"{result.n_enrolled} of {result.n_persons} persons enrolled; "
        f"{result.ranks.size} mated and {result.nonmated.size} non-mated searches; "
        f"rank-1 {result.rank(1):.4f}, rank-5 {result.rank(5):.4f}",
        markup=False,
    )
    if result.open_set:
        console.print(_points_table(result.open_set, "FPIR", "FNIR"))
    if result.decision is not None:
        d, p = result.decision, result.decision.point
        expected = "" if p.expected_fnir is None else f" (expected {p.expected_fnir:.3f})"
        console.print(
            f"the gallery's decision, {p.describe()}: FPIR {format_rate(d.fpir)}, "
            f"FNIR {format_rate(d.fnir)}{expected}",
            markup=False,
        )
    if result.calibration is not None:
        _print_calibration(result.calibration, "FPIR", "FNIR")
    if result.groups:
        table = new_table("group", "mated", "non-mated", "rank-1", "FNIR", "FPIR")
        for g in result.groups:
            table.add_row(
                g.group,
                str(g.n_mated),
                str(g.n_nonmated),
                format_rate(g.rank1),
                format_rate(g.fnir),
                format_rate(g.fpir),
            )
        console.print(f"by group at {result.threshold:.4f} ({result.threshold_source}):")
        console.print(table)


def _finish(
    result: VerificationResult | IdentificationResult,
    *,
    report: Path | None,
    plots_dir: Path | None,
    json_out: bool,
) -> None:
    """Draw the figures only when asked for, write them, then print the summary or JSON."""
    from ..eval import plots
    from ..eval.results import VerificationResult

    figures: Mapping[str, bytes] = {}
    if report is not None or plots_dir is not None:
        figures = (
            plots.verification_figures(result)
            if isinstance(result, VerificationResult)
            else plots.identification_figures(result)
        )
    written = _write(result, figures, report, plots_dir)
    if json_out:
        doc: dict[str, Any] = result.as_dict() | {"written": written}
        emit_json(doc)
        return
    if isinstance(result, VerificationResult):
        _print_verification(result)
    else:
        _print_identification(result)
    for path in written:
        console.print(f"wrote {path}", markup=False)


@eval_app.command("verify")
def verify(
    pairs_file: Annotated[
        Path, typer.Argument(metavar="PAIRS", help="LFW View-2 pairs file, or a CSV 'a,b,same'.")
    ],
    root: RootOpt = None,
    groups: GroupsOpt = None,
    report: ReportOpt = None,
    plots_dir: PlotsOpt = None,
    calibration: CalibrationOpt = None,
    no_face: NoFaceOpt = "count",
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    tta: TtaOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """1:1 verification on a pairs protocol: k-fold accuracy, ROC AUC, EER, TAR at FMR."""
    from ..decision import load_calibration
    from ..eval.protocols import MissingFace, pair_photos, read_groups, read_pairs
    from ..eval.results import verify_pairs

    pairs = read_pairs(pairs_file, root if root is not None else pairs_file.parent)
    group_table = read_groups(groups) if groups is not None else None
    saved = load_calibration(calibration) if calibration is not None else None
    with _embedding(
        len(pair_photos(pairs)), detector=detector, upsample=upsample, tta=tta, quiet=json_out
    ) as (pipe, advance):
        result = verify_pairs(
            pairs,
            pipe,
            protocol=pairs_file.name,
            groups=group_table,
            calibration=saved,
            missing_face=MissingFace(no_face),
            progress=advance,
        )
    _finish(result, report=report, plots_dir=plots_dir, json_out=json_out)


@eval_app.command("identify")
def identify(
    gallery: Annotated[
        Path, typer.Option("--gallery", help="Enrolment list: 'person path' lines.")
    ],
    probes: Annotated[
        Path,
        typer.Option(
            "--probes", help="Search list: 'person path'; persons not enrolled are non-mated."
        ),
    ],
    root: RootOpt = None,
    groups: GroupsOpt = None,
    report: ReportOpt = None,
    plots_dir: PlotsOpt = None,
    calibration: CalibrationOpt = None,
    no_face: NoFaceOpt = "count",
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    tta: TtaOpt = False,
    target_fpir: Annotated[
        float,
        typer.Option(
            "--target-fpir",
            help="The gallery decision's target FPIR: the gallery list is enrolled "
            "in a throw-away collection with it and every probe identified through it.",
        ),
    ] = 0.01,
    json_out: JsonOpt = False,
) -> None:
    """1:N identification: rank-1 / rank-5 / CMC, open-set FNIR at FPIR, and the gallery's own
    decision (``"decision"`` in the JSON)."""
    from ..decision import load_calibration
    from ..eval.protocols import MissingFace, read_groups, read_identification_list
    from ..eval.results import identify_lists

    enrol = read_identification_list(gallery, root)
    search = read_identification_list(probes, root)
    group_table = read_groups(groups) if groups is not None else None
    saved = load_calibration(calibration) if calibration is not None else None
    photos = {e.path for e in [*enrol, *search]}
    with _embedding(
        len(photos), detector=detector, upsample=upsample, tta=tta, quiet=json_out
    ) as (pipe, advance):
        result = identify_lists(
            enrol,
            search,
            pipe,
            groups=group_table,
            calibration=saved,
            missing_face=MissingFace(no_face),
            target_fpir=target_fpir,
            progress=advance,
        )
    _finish(result, report=report, plots_dir=plots_dir, json_out=json_out)


def _calibrate_folder(
    folder: Path,
    out: Path | None,
    collection: str | None,
    db: str | None,
    embed: dict[str, Any],
    json_out: bool,
) -> None:
    """``visage calibrate --folder``: the open-set record of the photos under ``folder``
    (:func:`visage.eval.open_set.calibrate`), written to ``out`` and/or made ``collection``'s."""
    import numpy as np

    from ..decision import OpenSetCalibration, identify_point
    from ..eval.open_set import calibrate as open_set_record
    from ..walk import photo_files
    from .gallery import _open

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    photos, _ = photo_files([folder])
    labelled = [(p.relative_to(folder).parts[0], p) for p in photos
                if len(p.relative_to(folder).parts) >= 2]  # fmt: skip
    embedded = _embed([p for _, p in labelled], **embed)
    kept = [(who, v) for who, p in labelled if (v := embedded.vector(p)) is not None]
    people = len({who for who, _ in kept})
    if people < MIN_PEOPLE:
        raise InputError(
            f"{folder}: {people} people with a face found; the open-set rule needs photos of "
            f"at least {MIN_PEOPLE} people in DIR/<person>/ folders"
        )
    source = (
        f"{len(kept)} photos of {people} people in {folder.name}/, {embed['detector']} detector"
    )
    vectors, labels = np.stack([v for _, v in kept]), [w for w, _ in kept]
    record = OpenSetCalibration.from_dict(
        open_set_record(vectors, labels, source, embedded.model_id)
    )
    if out is not None:
        try:
            out.write_text(json.dumps(asdict(record), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc}") from exc
    if collection is not None:
        with _open(db, None) as gallery:
            gallery.calibrate_collection(collection, record)
    point = identify_point(record, 0.01, record.sizes[-1], record.sizes[-1])
    summary = {"out": str(out) if out else None, "collection": collection, "source": source,
               "sizes_up_to": record.sizes[-1], "impostor_pairs": record.n_impostor,
               "at_fpir_0.01": asdict(point)}  # fmt: skip
    if json_out:
        emit_json(summary)
        return
    console.print(
        f"open-set calibration: {source}; {record.n_impostor} impostor pairs", markup=False
    )
    console.print(
        f"at FPIR 0.01 and {point.persons} persons: {point.describe()}, expected FNIR "
        f"{point.expected_fnir}", markup=False,
    )  # fmt: skip
    if out is not None:
        console.print(f"wrote {out}", markup=False)
    if collection is not None:
        console.print(f"{collection}: identify now uses it", markup=False)


MIN_PEOPLE = 10
"""Fewest people ``calibrate --folder`` accepts: with fewer, no gallery size is worth a table."""


@app.command("calibrate")
def calibrate_command(
    pairs_file: Annotated[
        Path | None,
        typer.Option(
            "--pairs", help="LFW View-2 pairs file, or a CSV 'a,b,same', of your own photos."
        ),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--folder",
            help="Instead of --pairs: your own people, DIR/<person>/<photo>; "
            "writes the open-set calibration identify derives its rule from.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Calibration record to write.")
    ] = None,
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection", "-c", help="With --folder: make it this collection's calibration."
        ),
    ] = None,
    db: DbOpt = None,
    target_fmr: Annotated[
        float,
        typer.Option("--target-fmr", min=0.0, max=1.0, help="The false-match rate to allow."),
    ] = 1e-3,
    root: RootOpt = None,
    every_pair: Annotated[
        bool,
        typer.Option(
            "--all-pairs",
            help="Compare every two photos the protocol names, not only its pairs "
            "(far more impostor pairs, so smaller FMRs can be supported).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Write even when too few impostor pairs back the target.")
    ] = False,
    no_face: NoFaceOpt = "count",
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    tta: TtaOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Choose the threshold that meets a target false-match rate (``--pairs``), or measure the
    open-set rule on your own people (``--folder``); write the calibration."""
    from ..eval.protocols import MissingFace, all_pairs, read_pairs, score_pairs
    from ..eval.results import calibrate, require_support

    if (pairs_file is None) == (folder is None):
        raise InputError("give one of --pairs (1:1 threshold) or --folder (open-set rule)")
    if folder is not None:
        if out is None and collection is None:
            raise InputError("--folder needs --out FILE, --collection NAME or both")
        embed = {"detector": detector, "upsample": upsample, "tta": tta,
                 "missing_face": MissingFace(no_face), "quiet": json_out}  # fmt: skip
        _calibrate_folder(folder, out, collection, db, embed, json_out)
        return
    if out is None or pairs_file is None:
        raise InputError("--pairs needs --out FILE")

    pairs = read_pairs(pairs_file, root if root is not None else pairs_file.parent)
    compared = all_pairs(pairs) if every_pair else pairs
    if not force:
        require_support(sum(not p.same for p in compared), target_fmr)
    embedded = _embed(
        [path for p in pairs for path in (p.a, p.b)],
        detector=detector,
        upsample=upsample,
        tta=tta,
        missing_face=MissingFace(no_face),
        quiet=json_out,
    )
    scored = score_pairs(compared, embedded)
    scope = f"all pairs of the {embedded.n_photos} photos of" if every_pair else "the pairs of"
    record = calibrate(
        scored,
        embedded,
        target_fmr=target_fmr,
        source=f"{scope} {pairs_file.name}, {detector} detector, no face: {no_face}",
        allow_unsupported=force,
    )
    try:
        out.write_text(record.to_json() + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc}") from exc
    if json_out:
        emit_json({"out": str(out), "calibration": asdict(record)})
    else:
        console.print(f"threshold {record.provenance()}", markup=False)
        console.print(f"wrote {out}", markup=False)
