"""``visage eval`` and ``visage calibrate`` through Typer's runner, on a dozen photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from visage.cli import app
from visage.decision import load_calibration

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def small_pairs(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of pairs_dev.txt cut to three same and three different pairs each."""
    lines = (faces_dir / "pairs_dev.txt").read_text().splitlines()[1:]
    kept = lines[0:3] + lines[100:103] + lines[200:203] + lines[300:303]
    path = tmp_path_factory.mktemp("protocol") / "pairs.txt"
    path.write_text("2\t3\n" + "\n".join(kept) + "\n")
    return path


def test_verify_writes_json_plots_and_report(
    faces_dir: Path, small_pairs: Path, tmp_path: Path
) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text(
        "person,group\nRobert_Zoellick,g1\nJay_Garner,g1\nLaura_Bush,g2\nNorm_Coleman,g2\n"
    )
    code, out, _ = run(
        "eval", "verify", small_pairs, "--root", faces_dir / "people", "--groups", groups,
        "--plots", tmp_path / "plots", "--report", tmp_path / "report.html", "--json",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["n_genuine"] == doc["n_impostor"] == 6
    assert len(doc["accuracy"]["folds"]) == 2 and doc["acquisition"]["photos"] == 24
    assert [g["group"] for g in doc["groups"]] == ["g1", "g2"]
    for name in ("roc", "det", "scores"):
        with Image.open(tmp_path / "plots" / f"{name}.png") as image:
            assert image.format == "PNG"
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_calibrate_then_evaluate_the_record(
    faces_dir: Path, small_pairs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "calibration.json"
    root = faces_dir / "people"
    code, _, err = run("calibrate", "--pairs", small_pairs, "--root", root, "--out", out)
    assert code == 1 and "6 impostor pairs cannot support FMR 0.001" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, stdout, _ = run(
        "calibrate", "--pairs", small_pairs, "--root", root, "--out", out,
        "--target-fmr", "0.1", "--force",
    )  # fmt: skip
    assert code == 0 and "wrote" in stdout
    record = load_calibration(out)
    assert record.target_fmr == 0.1 and (record.n_genuine, record.n_impostor) == (6, 6)
    code, stdout, _ = run(
        "eval", "verify", small_pairs, "--root", root, "--calibration", out, "--json"
    )
    assert code == 0
    check = json.loads(stdout)["calibration"]
    assert check["threshold"] == record.threshold and check["fmr"] <= 0.1


def test_identify(faces_dir: Path, tmp_path: Path) -> None:
    people = sorted(p for p in (faces_dir / "people").iterdir())[:3]
    gallery = tmp_path / "gallery.txt"
    probes = tmp_path / "probes.txt"
    gallery.write_text("".join(f"{d.name} {d.name}/{d.name}_0001.jpg\n" for d in people))
    distractor = min((faces_dir / "distractors").glob("*.jpg"))
    probes.write_text(
        "".join(f"{d.name} {d.name}/{d.name}_0002.jpg\n" for d in people)
        + f"stranger ../distractors/{distractor.name}\n"
    )
    code, out, _ = run(
        "eval", "identify", "--gallery", gallery, "--probes", probes,
        "--root", faces_dir / "people", "--json",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["mated_searches"] == 3 and doc["nonmated_searches"] == 1
    assert doc["rank1"] == 1.0
    # the gallery's own decision: these photos enrolled and searched through Gallery.identify
    decision = doc["decision"]
    assert (decision["target_fpir"], decision["persons"], decision["templates"]) == (0.01, 3, 3)
    assert decision["basis"] == "measured" and decision["margin"] is not None
    assert decision["fnir"] == 0.0 and decision["fpir"] == 0.0 and decision["expected_fnir"] > 0
    args = ("eval", "identify", "--gallery", gallery, "--probes", probes,
            "--root", faces_dir / "people", "--json")  # fmt: skip
    code, out, _ = run(*args, "--target-fpir", "0.2", "--plots", tmp_path / "plots")
    assert code == 0
    with Image.open(tmp_path / "plots" / "operating_curve.png") as image:  # FNIR, FPIR against N
        assert image.format == "PNG" and image.width >= 400
    looser = json.loads(out)["decision"]
    assert looser["target_fpir"] == 0.2 and looser["threshold"] > decision["threshold"]
    code, _, err = run(*args, "--target-fpir", "2")
    assert code == 1 and "target_fpir must be between" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    code, _, err = run("eval", "verify", pairs, "--root", tmp_path)
    assert code == 1 and err.startswith("error: 3 photo(s) not found")
    assert len(err.strip().splitlines()) == 1
    pairs.write_text("not a protocol\n")
    code, _, err = run("eval", "verify", pairs)
    assert code == 1 and "expected 'folds<TAB>pairs'" in err
