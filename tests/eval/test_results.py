"""The figures an evaluation reports, on synthetic embeddings whose distances are known."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from visage.decision import Calibration
from visage.errors import InputError
from visage.eval import plots, report
from visage.eval import protocols as p
from visage.eval import results as r


def at_angle(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([math.cos(a), math.sin(a)], dtype=np.float32)


def chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(degrees) / 2)


# Two photos each of ann (0, 10 deg) and bob (90, 100 deg), one of cy (45 deg); dan has no face.
ANGLES = {"ann1": 0.0, "ann2": 10.0, "bob1": 90.0, "bob2": 100.0, "cy1": 45.0}
EMBEDDED = p.Embedded(
    {Path(k): p.Acquisition(1, at_angle(v)) for k, v in ANGLES.items()}
    | {Path("dan1"): p.Acquisition(0, None)},
    "test-model",
    p.MissingFace.COUNT,
)
GROUPS = {"ann": "x", "bob": "y", "cy": "x", "dan": "y"}


def pair(a: str, b: str, fold: int) -> p.Pair:
    return p.Pair(Path(a), Path(b), a[:-1] == b[:-1], fold, a[:-1], b[:-1])


PAIRS = [
    pair("ann1", "ann2", 0),  # 10 deg
    pair("ann1", "cy1", 0),  # 45 deg, group x
    pair("bob1", "bob2", 1),  # 10 deg
    pair("bob1", "dan1", 1),  # no face, group y
    pair("ann2", "bob1", 1),  # 80 deg, mixed groups
]


def calibration(threshold: float, model_id: str = "test-model") -> Calibration:
    return Calibration(model_id, threshold, "target-fmr", "test", "2026-01-01", 2, 3, 0.1)


def test_misses_name_the_pairs_decided_wrongly() -> None:
    scores = p.score_pairs(PAIRS, EMBEDDED)
    loose = r.evaluate_verification(
        scores, EMBEDDED, protocol="t", calibration=calibration(chord(50))
    )
    assert [(str(m.pair.a), str(m.pair.b)) for m in loose.misses] == [("ann1", "cy1")]
    strict = r.evaluate_verification(
        scores, EMBEDDED, protocol="t", calibration=calibration(chord(5))
    )
    assert {(str(m.pair.a), m.pair.same) for m in strict.misses} == {("ann1", True), ("bob1", True)}
    html_text = report.html_report(loose, {})
    assert "Pairs decided wrongly" in html_text and "<td>cy1</td>" in html_text
    assert loose.as_dict()["n_misses"] == 1 and loose.as_dict()["misses"][0]["b"] == "cy1"


def test_det_draws_a_perfectly_separated_curve_on_the_floor() -> None:
    """Every threshold of a small, perfectly separated set has a rate of 0: the curve is still
    drawn (on the axis floor) and the legend says why, instead of an empty plot."""
    from visage.eval.metrics import roc

    curve = roc([0.1, 0.2, 0.3], [0.8, 0.9])
    for scale in ("log", "normal"):
        axes = plots.det_figure({"overall": curve}, scale=scale).axes[0]
        drawn = sum(len(line.get_xdata()) for line in axes.get_lines())
        assert drawn > 0, scale
        labels = [t.get_text() for t in axes.get_legend().get_texts()]
        assert any("rate of 0" in t for t in labels), labels


def test_verification_figures() -> None:
    scores = p.score_pairs(PAIRS, EMBEDDED)
    result = r.evaluate_verification(scores, EMBEDDED, protocol="t", groups=GROUPS)
    assert result.acquisition.no_face == 1 and result.acquisition.photos == 6
    # Both genuine pairs (10 deg) are nearer than every impostor, the one without a face included.
    assert result.summary.auc == 1.0
    assert result.kfold.accuracies == pytest.approx((1.0, 2 / 3))  # the no-face pair is wrong
    assert result.threshold_source == "EER threshold of all pairs"
    x, y = result.groups
    assert (x.rates.group, x.rates.n_genuine, x.rates.n_impostor) == ("x", 1, 1)
    assert (y.rates.group, y.rates.n_genuine, y.rates.n_impostor) == ("y", 1, 1)
    doc = result.as_dict()
    json.dumps(doc, allow_nan=False)  # JSON-safe: no NaN or infinity
    assert doc["accuracy"]["folds"][0] == 1.0 and len(doc["at_fmr"]) == 3


def test_verification_checks_a_calibration() -> None:
    scores = p.score_pairs(PAIRS, EMBEDDED)
    result = r.evaluate_verification(
        scores, EMBEDDED, protocol="t", calibration=calibration(chord(20))
    )
    assert result.calibration is not None
    assert (result.calibration.fmr, result.calibration.fnmr) == (0.0, 0.0)
    assert result.calibration.accuracy == pytest.approx(4 / 5)
    assert result.threshold == pytest.approx(chord(20))
    with pytest.raises(InputError, match="calibration is for model 'other'"):
        r.evaluate_verification(
            scores, EMBEDDED, protocol="t", calibration=calibration(0.5, "other")
        )


def test_identification_figures() -> None:
    gallery = [
        p.Entry("ann", Path("ann1")),
        p.Entry("bob", Path("bob1")),
        p.Entry("dan", Path("dan1")),
    ]
    probes = [
        p.Entry("ann", Path("ann2")),  # 10 deg from ann: rank 1
        p.Entry("bob", Path("bob2")),  # rank 1
        p.Entry("dan", Path("ann2")),  # dan never enrolled: a miss, not a non-mated search
        p.Entry("cy", Path("cy1")),  # non-mated, 45 deg from ann
    ]
    scores = p.score_identification(gallery, probes, EMBEDDED)
    result = r.evaluate_identification(scores, EMBEDDED, groups=GROUPS)
    assert result.ranks.tolist() == [1, 1, math.inf]
    assert result.rank(1) == pytest.approx(2 / 3)
    assert result.n_persons == 3 and result.n_enrolled == 2 and result.n_unenrolled_photos == 1
    assert result.nonmated.tolist() == pytest.approx([chord(45)])
    assert [pt.target_fmr for pt in result.open_set] == list(r.IDENTIFY_FPIRS)
    x, y = result.groups
    assert (x.group, x.n_mated, x.n_nonmated, x.rank1) == ("x", 1, 1, 1.0)
    assert (y.group, y.n_mated, y.rank1, y.fnir) == ("y", 2, 0.5, 0.5)
    assert math.isnan(y.fpir)
    assert result.calibration is None
    json.dumps(result.as_dict(), allow_nan=False)
    checked = r.evaluate_identification(scores, EMBEDDED, calibration=calibration(chord(20)))
    assert checked.calibration is not None and checked.calibration.accuracy is None
    assert (checked.calibration.fmr, checked.calibration.fnmr) == pytest.approx((0.0, 1 / 3))
    assert checked.as_dict()["calibration"]["fnmr"] == pytest.approx(1 / 3, abs=1e-6)


def test_identification_needs_a_mated_probe() -> None:
    scores = p.score_identification(
        [p.Entry("ann", Path("ann1"))], [p.Entry("cy", Path("cy1"))], EMBEDDED
    )
    with pytest.raises(InputError, match="no probe is of a person in the gallery"):
        r.evaluate_identification(scores, EMBEDDED)


def test_the_gallery_decision_keeps_its_audit_checkpoints_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throw-away gallery's chain is checkpointed beside it, under ``scratch``, and gone
    with it; never into the anchor file ``$VISAGE_AUDIT_ANCHORS`` names (a server's, as its
    worker processes inherit it), whose chain it is not."""
    monkeypatch.setenv("VISAGE_AUDIT_ANCHORS", str(tmp_path / "server.audit-anchors"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scores = p.score_identification(
        [p.Entry("ann", Path("ann1")), p.Entry("bob", Path("bob1"))],
        [p.Entry("ann", Path("ann2"))],
        EMBEDDED,
    )
    r.gallery_decision(scores, EMBEDDED, scratch=scratch)
    assert list(tmp_path.iterdir()) == [scratch] and list(scratch.iterdir()) == []


def test_calibrate_refuses_an_unsupported_target() -> None:
    scores = p.score_pairs(PAIRS, EMBEDDED)
    with pytest.raises(InputError, match="3 impostor pairs cannot support FMR 0.001"):
        r.calibrate(scores, EMBEDDED, target_fmr=1e-3, source="t")
    record = r.calibrate(scores, EMBEDDED, target_fmr=1e-3, source="t", allow_unsupported=True)
    assert record.model_id == "test-model" and record.method == "target-fmr"
    assert record.threshold == pytest.approx(chord(10))  # just the genuine pairs match
    assert (record.n_genuine, record.n_impostor, record.target_fmr) == (2, 3, 1e-3)
    assert Calibration.from_json(record.to_json()) == record


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        self.tables += tag == "table"


def test_report_embeds_figures_and_escapes_labels() -> None:
    scores = p.score_pairs(PAIRS, EMBEDDED)
    result = r.evaluate_verification(
        scores, EMBEDDED, protocol="<pairs>", groups={"ann": "<b>", "cy": "<b>"}
    )
    figures = plots.verification_figures(result)
    assert set(figures) == {"roc", "det", "scores"}
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    page = report.html_report(result, figures)
    assert "<pairs>" not in page and "&lt;pairs&gt;" in page and "&lt;b&gt;" in page
    parser = _Collect()
    parser.feed(page)
    assert len(parser.images) == 3 and all(
        s.startswith("data:image/png;base64,") for s in parser.images
    )
    assert parser.tables >= 4
