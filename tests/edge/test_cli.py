"""``visage video`` and ``visage edge status | keygen`` through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.edge.conftest import COLLECTION
from visage.cli import app
from visage.gallery import Gallery

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_video_timeline_identified_and_annotated(
    two_people_video: Path, local_gallery: Gallery, tmp_path: Path
) -> None:
    out, annotated = tmp_path / "timeline.json", tmp_path / "annotated.avi"
    code, stdout, _ = run(
        "video",
        str(two_people_video),
        "--every",
        "3",
        "--db",
        local_gallery.url,
        "--collection",
        COLLECTION,
        "--json",
        "--out",
        str(out),
        "--annotate",
        str(annotated),
    )
    assert code == 0
    doc = json.loads(stdout)
    assert doc == json.loads(out.read_text())
    assert len(doc["tracks"]) == 2 and all(t["identity"]["person_id"] for t in doc["tracks"])
    assert annotated.stat().st_size > 0
    actions = [e.action for e in local_gallery.audit_events(collection=COLLECTION, limit=1000)]
    assert actions.count("identify") == 2  # each track identified once, audited


def test_video_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = run("video", str(tmp_path / "missing.avi"))
    assert code == 1 and "no such file" in err


def test_keygen_and_status(tmp_path: Path) -> None:
    code, out, _ = run("edge", "keygen", str(tmp_path / "k.pem"))
    assert code == 0 and out.strip().startswith("ed25519:")
    code, out, _ = run("edge", "status", "--state", str(tmp_path / "state"), "--json")
    assert code == 0 and json.loads(out)["pending"] == 0
