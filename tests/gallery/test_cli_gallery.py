"""The gallery commands through Typer's runner, on SQLite and PostgreSQL, with real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from typer.testing import CliRunner

from tests.conftest import two_face_photo
from visage.cli import app

runner = CliRunner()
PEOPLE = ("Al_Sharpton", "Alvaro_Uribe", "Angelina_Jolie")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def enrolled(db_url: str, tmp_path: Path, faces_dir: Path) -> str:
    """Two photos each of three people enrolled into collection ``demo`` through the CLI."""
    folder = tmp_path / "enroll"
    for name in PEOPLE:
        (folder / name).mkdir(parents=True)
        for i in (1, 2):
            photo = faces_dir / "people" / name / f"{name}_{i:04d}.jpg"
            shutil.copy(photo, folder / name / photo.name)
    code, out, err = run("enroll", str(folder), "--basis", "consent", "--granted-by", "tests",
                         "-c", "demo", "--face", "center", "--db", db_url, "--json",
                         "--target-fpir", "0.02")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["enrolled"], doc["refused"]) == (6, 0)
    return db_url


def test_enroll_is_idempotent_and_identify_answers(
    enrolled: str, faces_dir: Path, tmp_path: Path
) -> None:
    code, out, _ = run("enroll", str(tmp_path / "enroll"), "--basis", "consent", "--granted-by",
                       "tests", "-c", "demo", "--face", "center", "--db", enrolled, "--json")
    assert code == 0 and json.loads(out)["duplicate"] == 6
    probe = faces_dir / "people" / "Angelina_Jolie" / "Angelina_Jolie_0003.jpg"
    stranger = min((faces_dir / "distractors").glob("*.jpg"))
    code, out, _ = run("identify", str(probe), str(stranger), "-c", "demo", "--face", "center",
                       "--db", enrolled, "--json")
    assert code == 0
    answers = json.loads(out)
    assert answers[0]["candidates"][0]["external_id"] == "Angelina_Jolie"
    assert not answers[0]["unknown"] and answers[1]["unknown"]
    point = answers[0]["operating_point"]  # the collection's target, at its size (issue 16)
    assert (point["target_fpir"], point["persons"], point["templates"]) == (0.02, 3, 6)
    assert point["supported"] is True and point["margin"] is not None
    assert answers[0]["threshold"] <= point["ceiling"]  # this probe's bar under the margin rule
    code, out, _ = run("identify", str(probe), "-c", "demo", "--face", "center", "--db", enrolled)
    assert code == 0 and "Angelina Jolie" in out


def test_identify_answers_every_face_of_a_group_photo(
    enrolled: str, faces_dir: Path, tmp_path: Path
) -> None:
    """By default every face of a photo gets its own answer with its box (issue 13.4: a photo
    with a second face was refused); --face still picks one."""
    jolie = faces_dir / "people" / "Angelina_Jolie" / "Angelina_Jolie_0003.jpg"
    stranger = min((faces_dir / "distractors").glob("*.jpg"))
    group = two_face_photo(stranger, jolie, tmp_path / "two.jpg")  # face 1 (right) is Jolie's
    code, out, _ = run("identify", str(group), "-c", "demo", "--db", enrolled, "--json")
    assert code == 0, out
    answers = json.loads(out)
    assert len(answers) >= 2 and {a["photo"] for a in answers} == {str(group)}
    named = [i for i, a in enumerate(answers) if not a["unknown"]]
    assert len(named) == 1, answers
    jolie_face = answers[named[0]]
    assert jolie_face["candidates"][0]["external_id"] == "Angelina_Jolie"
    assert jolie_face["box"][0] >= 300  # the right-hand face
    code, out, _ = run("identify", str(group), "-c", "demo", "--face", str(named[0]),
                       "--db", enrolled, "--json")
    assert code == 0 and len(json.loads(out)) == 1 and not json.loads(out)[0]["unknown"]


def test_persons_consent_and_delete(enrolled: str) -> None:
    code, out, _ = run("persons", "list", "-c", "demo", "--db", enrolled, "--json")
    people = json.loads(out)
    assert code == 0 and sorted(p["external_id"] for p in people) == sorted(PEOPLE)
    assert all(p["templates"] == 2 and p["consent_valid"] for p in people)

    code, out, _ = run("consent", "revoke", "Al_Sharpton", "-c", "demo", "--reason", "asked",
                       "--db", enrolled, "--json")
    assert code == 0 and json.loads(out)["templates_removed"] == 2
    code, out, _ = run("persons", "show", "Al_Sharpton", "-c", "demo", "--db", enrolled, "--json")
    shown = json.loads(out)
    assert shown["templates"] == 0 and shown["consents"][-1]["status"] == "revoked"

    code, out, _ = run("persons", "delete", "Alvaro_Uribe", "-c", "demo", "--yes",
                       "--purpose", "erasure", "--db", enrolled)
    assert code == 0 and "2 templates removed" in out
    code, _, err = run("persons", "show", "Alvaro_Uribe", "-c", "demo", "--db", enrolled)
    assert code == 1 and err.strip().startswith("error: no person 'Alvaro_Uribe'")
    assert len(err.strip().splitlines()) == 1

    code, out, _ = run("audit", "show", "-n", "3", "--db", enrolled, "--json")
    assert [e["action"] for e in json.loads(out)][-2:] == ["consent.revoke", "person.delete"]


def test_delete_without_a_terminal_needs_yes(enrolled: str) -> None:
    """No terminal (a script, CI, CliRunner) and no --yes: one line naming --yes, exit 1, and
    nothing deleted; with --yes the same call deletes (issue 13 item 7: it said "Aborted.")."""
    code, out, err = run("persons", "delete", "Angelina_Jolie", "-c", "demo", "--db", enrolled)
    assert code == 1 and "Aborted" not in out + err
    assert err.strip() == "error: persons delete: no terminal to confirm on; pass --yes to delete"
    code, out, _ = run("persons", "show", "Angelina_Jolie", "-c", "demo", "--db", enrolled, "--json")
    assert code == 0 and json.loads(out)["templates"] == 2
    code, out, _ = run("persons", "delete", "Angelina_Jolie", "-c", "demo", "--yes", "--db", enrolled)
    assert code == 0 and "2 templates removed" in out


def test_audit_verify_names_the_tampered_row(enrolled: str) -> None:
    code, out, _ = run("audit", "verify", "--db", enrolled)
    assert code == 0 and "audit chain intact" in out
    engine = create_engine(enrolled)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET purpose = 'nothing to see' WHERE seq = 7"))
    engine.dispose()
    code, _, err = run("audit", "verify", "--db", enrolled)
    assert code == 1
    assert err.strip().splitlines() == [
        f"store: {make_url(enrolled).render_as_string(hide_password=True)}",
        "error: audit chain broken at event 7: its contents do not match its hash",
    ]


def test_audit_show_filters_by_collection_and_action(enrolled: str, tmp_path: Path) -> None:
    """Issue 13 item 16: the CLI had no collection or action filter, the API had both."""
    code, _, err = run("enroll", str(tmp_path / "enroll"), "--basis",
                       "consent", "--granted-by", "tests", "-c", "other", "--face", "center",
                       "--db", enrolled, "--json")  # fmt: skip
    assert code == 0, err
    code, out, _ = run("audit", "show", "-n", "500", "--db", enrolled, "--json")
    everything = json.loads(out)
    assert {e["collection"] for e in everything} >= {"demo", "other"}  # the positive control
    code, out, _ = run("audit", "show", "-n", "500", "-c", "other", "--db", enrolled, "--json")
    other = json.loads(out)
    assert other and {e["collection"] for e in other} == {"other"}
    assert len(other) < len(everything)
    code, out, _ = run("audit", "show", "--action", "enroll", "-c", "demo", "--db",
                       enrolled, "--json")  # fmt: skip
    enrolls = json.loads(out)
    assert len(enrolls) == 6 and {(e["action"], e["collection"]) for e in enrolls} == {
        ("enroll", "demo")
    }


def test_audit_show_filters_by_actor_and_time(enrolled: str, tmp_path: Path) -> None:
    """``audit show`` takes the API's actor and since/until filters: a second enrollment by
    another actor is all that ``--actor`` lists, and a window starting between the two runs
    holds only the second's events; a date that is not one exits 1 with a message."""
    code, out, _ = run("audit", "show", "-n", "500", "--db", enrolled, "--json")
    first = json.loads(out)
    code, _, err = run("enroll", str(tmp_path / "enroll"), "--basis", "consent", "--granted-by",
                       "tests", "-c", "later", "--face", "center", "--db", enrolled,
                       "--actor", "cli:auditor", "--json")  # fmt: skip
    assert code == 0, err
    code, out, _ = run("audit", "show", "-n", "500", "--actor", "cli:auditor", "--db", enrolled,
                       "--json")  # fmt: skip
    mine = json.loads(out)
    assert mine and {e["actor"] for e in mine} == {"cli:auditor"}
    assert {e["actor"] for e in first} and "cli:auditor" not in {e["actor"] for e in first}
    code, out, _ = run("audit", "show", "-n", "500", "--since", first[-1]["at"], "--db", enrolled,
                       "--json")  # fmt: skip
    window = json.loads(out)
    assert window[0]["seq"] == first[-1]["seq"] and len(window) == len(mine) + 1
    code, out, _ = run("audit", "show", "-n", "500", "--until", first[-1]["at"], "--db", enrolled,
                       "--json")  # fmt: skip
    assert [e["seq"] for e in json.loads(out)] == [e["seq"] for e in first[:-1]]
    code, _, err = run("audit", "show", "--since", "yesterday", "--db", enrolled)
    assert code == 1 and "not an ISO date or datetime" in err


def test_export_import(enrolled: str, tmp_path: Path) -> None:
    dump = tmp_path / "demo.jsonl"
    code, out, _ = run("export", "-c", "demo", "--out", str(dump), "--db", enrolled, "--json")
    assert code == 0 and json.loads(out)["templates"] == 6
    assert "image" not in dump.read_text()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out, _ = run("import", str(dump), "--collection", "copy", "--db", other, "--json")
    assert code == 0 and (json.loads(out)["persons"], json.loads(out)["templates"]) == (3, 6)
    code, out, _ = run("persons", "list", "-c", "copy", "--db", other, "--json")
    assert len(json.loads(out)) == 3


def test_bad_input_is_one_line_and_exit_1(enrolled: str, tmp_path: Path) -> None:
    cases = [
        ("identify", str(tmp_path / "missing.jpg"), "-c", "demo"),
        ("identify", str(tmp_path), "-c", "nowhere"),
        ("enroll", str(tmp_path / "nope"), "--basis", "consent", "--granted-by", "x"),
        ("enroll", str(tmp_path), "--basis", "whim", "--granted-by", "x", "-c", "demo"),
        ("consent", "grant", "Angelina_Jolie", "--basis", "consent", "--granted-by", "x",
         "--expires", "soon", "-c", "demo"),
        ("import", str(tmp_path / "missing.jsonl")),
    ]
    (tmp_path / "x").mkdir()
    shutil.copy(Path(__file__), tmp_path / "x" / "photo.jpg")
    for args in cases:
        code, _, err = run(*args, "--db", enrolled)
        assert code == 1, args
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)


def test_read_only_commands_create_no_store_and_name_the_one_read(tmp_path: Path) -> None:
    """Without VISAGE_DB and without a default store, keys list / persons list / audit show /
    audit verify say which store they looked for and exit 1, leaving no file behind (issue 13
    item 8: keys list made an empty store and showed an empty table). Once a store exists
    they read it and say which."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "VISAGE_DB": None, "VISAGE_CONFIG": None}
    default = home / ".local" / "share" / "visage" / "visage.db"
    reads = [("keys", "list"), ("persons", "list"), ("audit", "show"), ("audit", "verify")]
    for args in reads:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.strip() == (
            f"error: no gallery store at {default} (none is created to read from; "
            "name the store with --db or VISAGE_DB)"
        ), (args, result.stderr)
        assert not (home / ".local").exists(), f"{args} created {default}"

    created = runner.invoke(app, ["keys", "create", "--scopes", "admin"], env=env)
    assert created.exit_code == 0 and default.exists(), created.stderr  # a write makes the store
    for args in [a for a in reads if a[0] != "persons"]:  # the new store has no collection
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, (args, result.stderr)
        assert f"store: sqlite:///{default}" in result.stderr.splitlines(), (args, result.stderr)
    listed = runner.invoke(app, ["keys", "list", "--json"], env=env)
    assert [k["scopes"] for k in json.loads(listed.stdout)] == [["admin"]]
    persons = runner.invoke(app, ["persons", "list"], env=env)
    assert persons.stderr.strip() == "error: no collection named 'default'"  # read, not refused


def test_enroll_counts_the_collection_and_says_what_it_skipped(
    enrolled: str, faces_dir: Path, tmp_path: Path
) -> None:
    """A second run adding one person reports the collection's 4 persons (issue 13 item 9: it
    said 1), and a loose photo, a folder inside a person folder and a folder without photos
    are reported as skipped with why, none of them enrolled or made a person."""
    newcomer, other = faces_dir / "people" / "Bill_McBride", faces_dir / "people" / "Billy_Crystal"
    folder = tmp_path / "more"
    (folder / newcomer.name / "old").mkdir(parents=True)
    (folder / "sub").mkdir()
    photos = sorted(newcomer.glob("*.jpg"))
    shutil.copy(photos[0], folder / newcomer.name / photos[0].name)
    shutil.copy(photos[1], folder / newcomer.name / "old" / photos[1].name)  # enrollable
    loose = min(other.glob("*.jpg"))
    shutil.copy(loose, folder / loose.name)
    args = ["enroll", str(folder), "--basis", "consent", "--granted-by", "tests", "-c", "demo",
            "--face", "center", "--db", enrolled]
    code, out, err = run(*args, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["enrolled"], doc["persons"], doc["new_persons"]) == (1, 4, 1), doc
    reasons = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert set(reasons) == {loose.name, "old", "sub"}, reasons
    assert "beside the person folders" in reasons[loose.name]
    assert f"inside person folder {newcomer.name!r}" in reasons["old"]
    assert "not made a person" in reasons["sub"]
    code, out, _ = run("persons", "show", newcomer.name, "-c", "demo", "--db", enrolled, "--json")
    assert json.loads(out)["templates"] == 1, "the photo in the nested folder was not enrolled"
    code, out, _ = run("persons", "list", "-c", "demo", "--db", enrolled, "--json")
    assert sorted(p["external_id"] for p in json.loads(out)) == sorted([*PEOPLE, newcomer.name])

    code, out, err = run(*args)
    assert code == 0
    assert out.strip() == ("0 enrolled, 1 already enrolled, 0 refused, 3 skipped; "
                           "4 persons in 'demo' (0 new)")
    assert sum(line.startswith("skipped: ") for line in err.splitlines()) == 3, err


def _at_80_columns(*args: str) -> str:
    """A command's table as a user sees it in an 80-column terminal (a real process)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "visage", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    return done.stdout


def _column(table: str, index: int) -> list[str]:
    """The cells of one column, each wrapped cell's lines joined back (without spaces)."""
    cells: list[str] = []
    for line in table.splitlines():
        if line.startswith("│"):
            part = line.split("│")[index + 1].strip()
            if line.split("│")[1].strip() or not cells:  # first column filled: a new row
                cells.append(part)
            else:
                cells[-1] += part
    return cells


def test_tables_at_80_columns_keep_every_id_and_path_whole(
    enrolled: str, faces_dir: Path, tmp_path: Path
) -> None:
    """Issue 13 item 5: at 80 columns the person ids, the key id `keys revoke` needs, the photo
    path and the audit summary were cut with '…'. Now ids are never broken and other values
    wrap."""
    _, out, _ = run("persons", "list", "-c", "demo", "--db", enrolled, "--json")
    ids = [p["id"] for p in json.loads(out)]
    shown = _at_80_columns("persons", "list", "-c", "demo", "--db", enrolled)
    assert "…" not in shown and all(pid in shown for pid in ids), shown

    made = runner.invoke(app, ["keys", "create", "--scopes", "identify", "--collections",
                               "demo,a-rather-long-collection-name,another-long-collection",
                               "--name", "the camera at the north door", "--db", enrolled,
                               "--json"])
    key_id = json.loads(made.stdout)["id"]
    shown = _at_80_columns("keys", "list", "--db", enrolled)
    assert "…" not in shown and key_id in shown, shown

    shown = _at_80_columns("audit", "show", "-n", "5", "--db", enrolled)
    assert "…" not in shown and "key.create" in _column(shown, 3), shown
    assert f"key={key_id}" in "".join(_column(shown, 6)), shown

    deep = tmp_path / "a-rather-long-folder-name" / "with" / "several" / "levels"
    deep.mkdir(parents=True)
    probe = shutil.copy(faces_dir / "people" / "Angelina_Jolie" / "Angelina_Jolie_0003.jpg", deep)
    shown = _at_80_columns("identify", str(probe), "-c", "demo", "--face", "center",
                           "--db", enrolled)
    assert "…" not in shown and "".join(_column(shown, 0)) == str(probe), shown  # one row
