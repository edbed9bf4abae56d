"""The CLI through Typer's runner: output, --json, resumable embed, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from typer.testing import CliRunner

from tests.conftest import two_face_photo
from visage.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_detect_json(people_photos: list[Path]) -> None:
    code, out, _ = run("detect", str(people_photos[0]), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc[0]["source"] == str(people_photos[0]) and len(doc[0]["faces"]) >= 1
    assert set(doc[0]["faces"][0]["box"]) == {"left", "top", "right", "bottom"}


def test_detect_table_and_bad_file(people_photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text")
    code, out, err = run("detect", str(people_photos[0]), str(bad))
    assert code == 1
    assert "notes.jpg: invalid image: not a recognised image format" in err
    assert people_photos[0].name[:10] in out


def test_compare_same_and_different(people_photos: list[Path]) -> None:
    a, b = [p for p in people_photos if p.parent == people_photos[0].parent][:2]
    code, out, _ = run("compare", str(a), str(b), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["same"] is True and doc["distance"] < doc["threshold"]
    assert "FMR" in doc["threshold_source"]
    other = next(p for p in people_photos if p.parent != a.parent)
    code, out, _ = run("compare", str(a), str(other))
    assert code == 0 and out.startswith("different people")


def test_compare_refuses_several_faces_unless_one_is_picked(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    """A two-person photo is not compared by its largest face in silence: refused without
    --face, and with it the picked face (named by its box) is the one compared."""
    a, a2 = [p for p in people_photos if p.parent == people_photos[0].parent][:2]
    other = next(p for p in people_photos if p.parent != a.parent)
    group = two_face_photo(other, a, tmp_path / "two.jpg")  # face 0: other, face 1: a
    code, _, err = run("compare", str(group), str(a2))
    assert code == 1 and "2 faces found; pick one" in err, err
    code, out, _ = run("compare", str(group), str(a2), "--face", "1", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["same"] is True and doc["box"][0] >= 300, doc  # the right-hand face
    code, out, _ = run("compare", str(a2), str(group), "--other-face", "0", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["same"] is False and doc["other_box"][2] <= 250, doc
    code, out, _ = run("compare", str(group), str(a2), "--face", "1", "--face-recognition", "--json")
    doc = json.loads(out)
    fr = doc["face_recognition"]
    # docs/pipeline.md: face_recognition's distance is ~1.42x Visage's (1.33-1.54 for 90%).
    assert code == 0 and fr["same"] is True and 1.2 < fr["distance"] / doc["distance"] < 1.7
    code, _, err = run("compare", str(group), str(a2), "--face", "7")
    assert code == 1 and "face 7 does not exist" in err


def test_compare_errors_are_one_line(tmp_path: Path, people_photos: list[Path]) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, _, err = run("compare", str(empty), str(people_photos[0]))
    assert code == 1 and err.strip() == f"error: {empty}: invalid image: empty file"
    code, _, err = run("compare", str(tmp_path / "missing.jpg"), str(people_photos[0]))
    assert code == 1 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_embed_resumes_and_reports_bad_files(people_photos: list[Path], tmp_path: Path) -> None:
    folder = people_photos[0].parent
    out = tmp_path / "faces.parquet"
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(people_photos[0].read_bytes()[:300])
    code, stdout, err = run("embed", str(folder), str(bad), "--out", str(out), "--json")
    assert code == 1 and "truncated.jpg" in err
    summary = json.loads(stdout)
    n = len(list(folder.glob("*.jpg")))
    assert summary["processed"] == n + 1 and summary["failed"] == 1
    table = pq.read_table(out).to_pylist()
    faces = [r for r in table if r["face_index"] >= 0]
    assert len(faces) >= n and all(len(r["embedding"]) == 128 for r in faces)
    assert all(r["model_id"] == "dlib_resnet_v1" for r in faces)
    # Re-run: the good photos are done, only the bad one is retried.
    code, stdout, _ = run("embed", str(folder), str(bad), "--out", str(out), "--json")
    summary = json.loads(stdout)
    assert summary["already_done"] == n and summary["processed"] == 1
    assert len([r for r in pq.read_table(out).to_pylist() if r["face_index"] >= 0]) == len(faces)
    assert not out.with_name(out.name + ".parts").exists()
    # A third run: still one error row for the file that keeps failing, not one per run.
    run("embed", str(bad), "--out", str(out), "--json")
    errors = [r for r in pq.read_table(out).to_pylist() if r["error"] is not None]
    assert [r["source"] for r in errors] == [str(bad)], errors


def test_embed_with_nothing_to_do(tmp_path: Path) -> None:
    code, _, err = run("embed", str(tmp_path), "--out", str(tmp_path / "x.parquet"))
    assert code == 1 and "no image files" in err


def test_version_and_bad_option() -> None:
    code, out, _ = run("version", "--json")
    assert code == 0 and json.loads(out)["models"]["resnet"]["sha256"].startswith("55533b28")
    result = runner.invoke(app, ["detect", "--upsample", "9", "x.jpg"])
    assert result.exit_code == 2


def test_unknown_detector_is_a_usage_error(people_photos: list[Path]) -> None:
    """Exit 2 (a bad option, as for --upsample 9) with one line naming the choices."""
    code, _, _ = run("detect", "--detector", "hog", str(people_photos[0]))
    assert code == 0  # the control: a known detector runs
    code, out, err = run("detect", "--detector", "mtcnn", str(people_photos[0]))
    assert code == 2 and out == "", (code, out, err)
    flat = " ".join(err.replace("│", " ").split())  # Rich boxes and wraps usage errors
    assert "Invalid value for '--detector' / '-d': unknown detector 'mtcnn'; choose one of hog, cnn" in flat


HEAVY = ("visage.server", "visage.gallery.service", "visage.edge", "fastapi", "sqlalchemy",
         "onnxruntime")


def test_import_of_the_cli_loads_no_server_gallery_edge_or_runtime() -> None:
    """`visage --help` stays fast (issue 13: 3.8 s before) because the command modules import
    the server, gallery, edge and model runtime code only inside the commands that use it."""
    import subprocess
    import sys

    probe = (
        "import sys, visage.cli\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import visage.server.app, visage.gallery.service, visage.edge.agent, onnxruntime\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    after_cli, after_all = done.stdout.splitlines()
    assert after_all == repr(sorted(HEAVY)), "control: the names are the modules' real names"
    assert after_cli == "[]", f"import visage.cli loaded {after_cli}"


def test_choice_options_spell_the_enums_they_stand_for() -> None:
    """--when-full and --no-face are declared as Literals (no edge/eval import at start-up);
    their values are those of the enums the commands convert them to."""
    from typing import get_args

    from visage.cli.edge import WhenFull
    from visage.cli.eval import NoFace
    from visage.edge.queue import FullPolicy
    from visage.eval.protocols import MissingFace

    assert get_args(WhenFull) == tuple(p.value for p in FullPolicy)
    assert get_args(NoFace) == tuple(m.value for m in MissingFace)


def test_one_convention_for_the_collection_and_the_output_file() -> None:
    """Issue 13 item 12: `export COLLECTION PATH` was positional and `import --as NAME`, while
    every other command says --collection and --out. Every command naming a collection or an
    output file now spells it --collection / -c and --out / -o."""
    import typer.main

    def commands(group: Any, prefix: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a group (Typer bundles its own click)
                found.update(commands(cmd, f"{prefix}{name} "))
            else:
                found[f"{prefix}{name}"] = cmd
        return found

    def is_option(param: Any) -> bool:
        return bool(param.param_type_name == "option")

    every = commands(typer.main.get_command(app), "")
    assert {"export", "import", "enroll", "identify"} <= set(every)  # control: they are seen
    for name, cmd in every.items():
        for param in cmd.params:
            if param.name == "collection":
                assert is_option(param) and "--collection" in param.opts, name
                assert "-c" in param.opts, name
            if param.name in ("out", "path") and is_option(param):
                assert param.opts[0] == "--out", name
    export = {p.name: p for p in every["export"].params}
    assert "--out" in export["path"].opts and is_option(export["collection"])
    assert "--collection" in {p.name: p for p in every["import"].params}["name"].opts


def test_help_text_is_wrapped_to_the_terminal_not_to_the_docstring() -> None:
    """Issue 13 item 11: `enroll --help` at 80 columns broke sentences where the docstring has
    line breaks ("persons already enrolled keep" / "theirs ..."). Each paragraph now fills its
    lines: every line but a paragraph's last is over 60 characters."""
    import os
    import subprocess
    import sys

    for command in (["enroll"], ["audit", "verify"], ["edge", "run"], ["video"]):
        done = subprocess.run([sys.executable, "-m", "visage", *command, "--help"],
                              capture_output=True, text=True, check=True, timeout=60,
                              env={**os.environ, "COLUMNS": "80"})
        prose = done.stdout.split("╭")[0].splitlines()[3:]  # after the usage line
        paragraphs = "\n".join(line.strip() for line in prose).strip().split("\n\n")
        assert len(paragraphs) >= 1 and paragraphs[0], done.stdout
        for paragraph in paragraphs:
            lines = paragraph.splitlines()
            assert all(len(line) > 60 for line in lines[:-1]), (command, paragraph)


def test_help_names_kinds_of_values_not_python_types() -> None:
    """Issue 13 item 11: option help showed ``<bool>`` beside every flag and ``<str>`` beside
    every text option. Flags now show nothing, values a kind (TEXT, PATH, INTEGER), arguments
    the name their command's text uses."""
    import os
    import subprocess
    import sys

    for command, wanted in (([], []), (["enroll"], ["TEXT", "NUMBER", "DIRECTORY"]),
                            (["audit", "show"], ["INTEGER"]), (["export"], ["PATH", "TEXT"])):
        done = subprocess.run([sys.executable, "-m", "visage", *command, "--help"],
                              capture_output=True, text=True, check=True, timeout=60,
                              env={**os.environ, "COLUMNS": "120"})
        assert "--help" in done.stdout, done.stdout
        for python_type in ("<bool>", "<str>", "<int>", "<float>"):
            assert python_type not in done.stdout, (command, done.stdout)
        for kind in wanted:
            assert kind in done.stdout, (command, kind, done.stdout)
