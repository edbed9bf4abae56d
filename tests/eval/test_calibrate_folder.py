"""``visage calibrate --folder``: an operator's own people become a collection's open-set
calibration, and identify derives its rule from it (issue 16 item 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from visage.decision import default_open_set
from visage.gallery import Gallery

from .test_cli_eval import run


def _folder(faces_dir: Path, root: Path, people: int, photos: int = 3) -> Path:
    """``root/<person>/<photo>``: the first ``people`` of people/, ``photos`` photos each."""
    for person in sorted((faces_dir / "people").iterdir())[:people]:
        (root / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:photos]:
            shutil.copy(photo, root / person.name / photo.name)
    return root


def test_a_collection_calibrated_on_its_own_people(faces_dir: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    with Gallery(db, actor="test") as g:
        g.create_collection("staff", target_fpir=0.2)  # 58 photos can back a 20% FPIR
        rng = np.random.default_rng(0)
        for i in range(3):
            person = g.add_person("staff", f"P{i}")
            g.grant_consent("staff", person.id, basis="consent", granted_by="test")
            g.enroll("staff", person.id, rng.standard_normal(128).astype(np.float32))
        probe = rng.standard_normal(128).astype(np.float32)
        shipped = g.identify("staff", probe).operating_point
    folder = _folder(faces_dir, tmp_path / "ours", people=20)
    out = tmp_path / "open_set.json"
    code, stdout, err = run("calibrate", "--folder", folder, "--collection", "staff",
                            "--db", db, "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert " photos of 20 people in ours/" in summary["source"], summary
    assert summary["collection"] == "staff"
    # 58 strangers cannot back a 1% FPIR (10 named ones are needed): the summary says so
    assert summary["at_fpir_0.01"]["basis"] != "measured"
    record = json.loads(out.read_text())
    assert record["model_id"] == "dlib_resnet_v1" and record["sizes"][-1] >= 15
    assert record["margin"] and record["fnir"]
    with Gallery(db, actor="test") as g:
        info = g.collection("staff")
        assert info.open_set_source == record["source"]
        own = g.identify("staff", probe).operating_point
        events = [e for e in g.audit_events() if e.action == "collection.calibrate"]
    # identify now reads the collection's own tables, not the shipped ones
    assert own.basis == shipped.basis == "measured" and own.margin is not None
    assert own.margin != shipped.margin and own.threshold != shipped.threshold
    table = default_open_set("dlib_resnet_v1")
    assert table is not None and record["n_probes"] != table.n_probes
    assert len(events) == 1 and events[0].collection == "staff"


def test_calibrate_folder_refuses_what_it_cannot_use(faces_dir: Path, tmp_path: Path) -> None:
    few = _folder(faces_dir, tmp_path / "few", people=3)
    for args, message in (
        (("--folder", few, "--out", tmp_path / "x.json"), "at least 10 people"),
        (("--folder", few), "--folder needs --out FILE"),
        (("--out", tmp_path / "x.json"), "give one of --pairs"),
        (("--folder", tmp_path / "missing", "--out", tmp_path / "x.json"), "is not a folder"),
    ):
        code, _, err = run("calibrate", *args)
        assert code == 1 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
