"""Issue 11, item 4: ``visage import`` applies enrollment's rules to a crafted file, through the
CLI, on SQLite and PostgreSQL; identify stays right even when the store holds a corrupt vector."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from visage.cli import app

runner = CliRunner()
PEOPLE = ("Angelina_Jolie", "Al_Sharpton")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def counts(db: str) -> dict[str, int]:
    engine = create_engine(db)
    with engine.connect() as conn:
        found = {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("collection", "person", "consent", "template")
        }
    engine.dispose()
    return found


def refusals(db: str) -> list[dict[str, Any]]:
    engine = create_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT summary FROM audit_event WHERE action = 'collection.import.refused' ORDER BY seq"
        )).all()
    engine.dispose()
    return [json.loads(r[0]) for r in rows]


def audited(db: str, action: str) -> list[dict[str, Any]]:
    """``action``'s audit events: collection, actor and decoded summary."""
    engine = create_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT collection, actor, summary FROM audit_event WHERE action = :a"),
            {"a": action},
        ).all()
    engine.dispose()
    return [{"collection": c, "actor": a, "summary": json.loads(s)} for c, a, s in rows]


@pytest.fixture
def exported(db_url: str, tmp_path: Path, faces_dir: Path) -> tuple[str, Path, list[dict[str, Any]]]:
    """One photo each of two people enrolled through the CLI and exported: the store, the
    export and its parsed lines (header first)."""
    folder = tmp_path / "enroll"
    for name in PEOPLE:
        (folder / name).mkdir(parents=True)
        shutil.copy(faces_dir / "people" / name / f"{name}_0001.jpg", folder / name)
    code, _, err = run("enroll", str(folder), "--basis", "consent", "--granted-by", "tests",
                       "-c", "demo", "--face", "center", "--db", db_url, "--json")
    assert code == 0, err
    dump = tmp_path / "demo.jsonl"
    code, _, err = run("export", "-c", "demo", "-o", str(dump), "--db", db_url)
    assert code == 0, err
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    return db_url, dump, lines


def crafted(lines: list[dict[str, Any]], extra: dict[str, Any], path: Path) -> Path:
    """The genuine export with one attacker's record appended (it lands on line 4)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in [*lines, extra]))
    return path


def intruder(lines: list[dict[str, Any]], *, consents: list[Any], vector: bytes) -> dict[str, Any]:
    template = dict(lines[1]["templates"][0])
    template.update(embedding=base64.b64encode(vector).decode(), source_sha256="f" * 64)
    return {
        "person": {"id": "e" * 32, "display_name": "Mallory", "external_id": "mallory",
                   "metadata": {}, "created_at": None},
        "consents": consents,
        "templates": [template],
    }


VALID_CONSENT = {"basis": "consent", "purpose": None, "granted_by": "Mallory",
                 "granted_at": "2020-01-01T00:00:00+00:00", "expires_at": None,
                 "revoked_at": None, "revoked_by": None, "revoke_reason": None}


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("no consent", "has no valid consent: no consent record"),
        ("revoked consent", "has no valid consent: consent revoked"),
        ("all-NaN template", "NaN or infinity"),
        ("all-zero template", "every value is 0"),
        ("bidi name", "U+202E"),
        ("far-future consent", "out of range"),
    ],
)
def test_a_crafted_import_is_refused_whole_and_audited(
    exported: tuple[str, Path, list[dict[str, Any]]], tmp_path: Path, attack: str, message: str
) -> None:
    db, _, lines = exported
    unit = np.full(128, 128 ** -0.5, "<f4").tobytes()
    record = {
        "no consent": intruder(lines, consents=[], vector=unit),
        "revoked consent": intruder(lines, consents=[{
            **VALID_CONSENT, "revoked_at": "2021-01-01T00:00:00+00:00"}], vector=unit),
        "all-NaN template": intruder(lines, consents=[VALID_CONSENT],
                                     vector=np.full(128, np.nan, "<f4").tobytes()),
        "all-zero template": intruder(lines, consents=[VALID_CONSENT],
                                      vector=np.zeros(128, "<f4").tobytes()),
        "bidi name": intruder(lines, consents=[VALID_CONSENT], vector=unit),
        "far-future consent": intruder(lines, consents=[{
            **VALID_CONSENT, "granted_at": "9999-12-31T23:59:59-23:59"}], vector=unit),
    }[attack]
    if attack == "bidi name":
        record["person"]["display_name"] = "Mal\u202elory"
    before = counts(db)
    path = crafted(lines, record, tmp_path / "crafted.jsonl")
    code, _, err = run("import", str(path), "-c", "imp", "--db", db)
    assert code == 1 and err.startswith(f"error: {path} line 4: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert counts(db) == before  # nothing half-imported: not even the genuine persons
    code, _, _ = run("persons", "list", "-c", "imp", "--db", db)
    assert code == 1
    refused = refusals(db)
    assert len(refused) == 1 and "line 4" in refused[0]["detail"], refused
    assert refused[0]["sha256"] and refused[0]["reason"] in ("InputError", "ConsentError")


def test_the_genuine_export_imports_and_finds_the_twin(
    exported: tuple[str, Path, list[dict[str, Any]]], faces_dir: Path
) -> None:
    db, dump, _ = exported
    code, out, err = run("import", str(dump), "-c", "imp", "--db", db, "--json")
    assert code == 0 and json.loads(out)["templates"] == 2, err
    assert refusals(db) == []
    (imported,) = audited(db, "collection.import")  # the import itself is in the chain
    assert imported["collection"] == "imp" and imported["actor"].startswith("cli")
    summary = imported["summary"]
    assert (summary["persons"], summary["templates"], summary["source_collection"]) == (2, 2, "demo")
    assert summary["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    probe = faces_dir / "people" / "Angelina_Jolie" / "Angelina_Jolie_0001.jpg"
    code, out, err = run("identify", str(probe), "-c", "imp", "--face", "center", "--db", db,
                         "--json")
    assert code == 0, err
    answer = json.loads(out)[0]
    assert not answer["unknown"] and answer["candidates"][0]["external_id"] == "Angelina_Jolie"
    assert answer["candidates"][0]["distance"] < 0.01  # the enrolled photo itself

    # A vector corrupted in the store (not by import, which refuses it) never wins a search
    # and never yields a non-finite distance.
    engine = create_engine(db)
    with engine.begin() as conn:
        changed = conn.execute(text(
            "UPDATE template SET embedding = :b WHERE person_id IN (SELECT p.id FROM person p "
            "JOIN collection c ON c.id = p.collection_id WHERE c.name = 'imp' "
            "AND p.external_id = :e)"
        ), {"b": np.full(128, np.nan, "<f4").tobytes(), "e": PEOPLE[1]})
        assert changed.rowcount == 1
    engine.dispose()
    code, out, err = run("identify", str(probe), "-c", "imp", "--face", "center", "--db", db,
                         "--json")
    assert code == 0, err
    answer = json.loads(out)[0]
    distances = [c["distance"] for c in answer["candidates"]]
    assert all(isinstance(d, float) and math.isfinite(d) for d in distances), answer
    assert answer["candidates"][0]["external_id"] == "Angelina_Jolie" and not answer["unknown"]
    assert answer["candidates"][-1]["external_id"] == PEOPLE[1] and distances[-1] == 2.0
