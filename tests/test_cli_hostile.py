"""Hostile files and stored strings against the real ``visage`` command (issue 18, items 5, 6, 8).

Each test replays one attack through ``python -m visage`` in a subprocess, on real photos and a
real SQLite store: names that are not UTF-8, a link to ``/dev/zero``, a person folder linked out
of the folder enrolled, a folder 1,100 levels deep, a link planted at the export's temporary
name, and person names that are Rich markup.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO
from visage.imageio import MAX_FILE_BYTES

AL = "Al_Sharpton"


CAPPED = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    "runpy.run_module('visage', run_name='__main__', alter_sys=True)"
)
"""``python -m visage`` with its address space capped at 4 GB, set in the child itself: a
``preexec_fn`` would make subprocess fork the test process, whose gRPC threads (left by the
Milvus and Ray tests) can abort the child ("epoll_wait error: Bad file descriptor", SIGABRT
before exec; grpc/grpc#43055)."""


def visage(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m visage ARGS`` on this checkout; never a traceback, whatever the exit code.
    Address space capped at 4 GB: an unbounded read of /dev/zero fails here, not the host."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", CAPPED, *map(str, args)],
        check=False, capture_output=True, text=True, errors="backslashreplace", env=env,
        timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def enroll(root: Path, db: Path, *extra: str) -> dict:
    done = visage("enroll", root, "--basis", "consent", "--granted-by", "tests", "--face",
                  "center", "--db", db, "--json", *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def photo(faces_dir: Path, person: str, number: int) -> Path:
    return faces_dir / "people" / person / f"{person}_{number:04d}.jpg"


def fs_path(folder: Path, raw_name: bytes) -> Path:
    """``folder / raw_name`` for a file name given as bytes (may be not UTF-8)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + raw_name))


def test_enroll_carries_names_that_are_not_utf8_into_the_audit(
    faces_dir: Path, tmp_path: Path
) -> None:
    """Item 5: a refused photo named b'b\\xfe.jpg' raised UnicodeEncodeError in the audit hash
    (exit 1, refusal unaudited, the rest of the batch not enrolled). Now its name is escaped,
    the refusal is audited and the batch goes on."""
    person = tmp_path / "root" / AL
    person.mkdir(parents=True)
    shutil.copy(photo(faces_dir, AL, 1), person / "ok.jpg")
    Image.new("RGB", (200, 200), "grey").save(fs_path(person, b"b\xfe.jpg"), "JPEG")  # no face
    fs_path(person, b"c\xfd.jpg").write_bytes(b"not an image")
    shutil.copy(photo(faces_dir, AL, 2), fs_path(person, b"d\xff.jpg"))
    db = tmp_path / "v.db"

    doc = enroll(tmp_path / "root", db)
    assert (doc["enrolled"], doc["refused"]) == (2, 2), doc
    by_name = {Path(r["photo"]).name: r for r in doc["photos"]}
    assert set(by_name) == {"ok.jpg", "b\\xfe.jpg", "c\\xfd.jpg", "d\\xff.jpg"}
    assert by_name["b\\xfe.jpg"]["reason"].endswith("b\\xfe.jpg: no face found")

    events = json.loads(visage("audit", "show", "--db", db, "--json").stdout)
    refused = [e for e in events if e["action"] == "enroll.refused"]
    assert len(refused) == 1 and "b\\xfe.jpg: no face found" in refused[0]["summary"]["detail"]
    assert visage("audit", "verify", "--db", db).returncode == 0

    again = visage("enroll", tmp_path / "root", "--basis", "consent", "--granted-by", "t",
                   "--face", "center", "--db", db)  # fmt: skip
    assert again.returncode == 0
    assert "refused: " in again.stderr and "b\\xfe.jpg: no face found" in again.stderr


def test_a_link_to_dev_zero_is_never_read(faces_dir: Path, tmp_path: Path) -> None:
    """Item 5: ``z.jpg -> /dev/zero`` was read until MemoryError. In a folder it is skipped (a
    link out of the folder; with --follow-symlinks: not a regular file); named directly it is
    one error line, as is a file over the size cap (checked before a byte is read)."""
    person = tmp_path / "root" / AL
    person.mkdir(parents=True)
    shutil.copy(photo(faces_dir, AL, 1), person / "ok.jpg")
    (person / "z.jpg").symlink_to("/dev/zero")
    db = tmp_path / "v.db"

    doc = enroll(tmp_path / "root", db)
    assert doc["enrolled"] == 1
    assert [s["path"] for s in doc["skipped"]] == [str(person / "z.jpg")]
    assert "a symbolic link out of" in doc["skipped"][0]["reason"]
    followed = enroll(tmp_path / "root", db, "--follow-symlinks")
    assert followed["skipped"][0]["reason"].startswith("not a regular file"), followed

    done = visage("detect", person / "z.jpg")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {person / 'z.jpg'}: invalid image: not a regular " \
                                  "file (a device, pipe or socket)"  # fmt: skip
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    done = visage("detect", huge)
    assert done.returncode == 1 and f"over the limit of {MAX_FILE_BYTES:,}" in done.stderr


def test_a_person_folder_linked_out_of_the_root_is_not_followed(
    faces_dir: Path, tmp_path: Path
) -> None:
    """Item 5: a person folder that is a symlink out of the tree was followed (its outside
    photos enrolled). Now it is skipped and named; --follow-symlinks follows it."""
    root, outside = tmp_path / "root", tmp_path / "outside" / "Alvaro_Uribe"
    (root / AL).mkdir(parents=True)
    outside.mkdir(parents=True)
    shutil.copy(photo(faces_dir, AL, 1), root / AL / "a.jpg")
    for n in (1, 2):
        shutil.copy(photo(faces_dir, "Alvaro_Uribe", n), outside / f"{n}.jpg")
    (root / "Alvaro_Uribe").symlink_to(outside, target_is_directory=True)
    db = tmp_path / "v.db"

    doc = enroll(root, db)
    assert (doc["persons"], doc["enrolled"]) == (1, 1), doc
    assert doc["skipped"] == [{
        "path": str(root / "Alvaro_Uribe"),
        "reason": f"a symbolic link out of {root} (to {os.path.realpath(outside)}): not "
                  "followed; pass "
                  "--follow-symlinks to follow it",
    }]  # fmt: skip
    followed = enroll(root, db, "--follow-symlinks")
    assert (followed["persons"], followed["enrolled"], followed["skipped"]) == (2, 2, [])


def _nest(top: Path, depth: int) -> Path:
    """``top/d/d/…`` ``depth`` levels deep, made relative to each level (no long paths)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    return top.joinpath(*["d"] * depth)


def _unnest(top: Path) -> None:
    """Remove what :func:`_nest` made, deepest first (``shutil.rmtree`` recurses per level)."""
    deepest = top
    while (deepest / "d").is_dir():
        deepest = deepest / "d"
    while deepest != top.parent:
        for item in deepest.iterdir():
            if not item.is_dir():
                item.unlink()
        deepest.rmdir()
        deepest = deepest.parent


def test_a_folder_1100_deep_is_walked_without_recursion(faces_dir: Path, tmp_path: Path) -> None:
    """Item 5: `visage embed` on a folder 1,100 levels deep raised RecursionError. Now the walk
    is iterative: the photo at the bottom (named b'a\\xff.jpg', not UTF-8) is embedded and
    stored in the table with its name escaped; `visage enroll` reports the deep folder."""
    top = tmp_path / "P"
    try:
        bottom = _nest(top, 1100)
        shutil.copy(photo(faces_dir, AL, 1), fs_path(bottom, b"a\xff.jpg"))
        shutil.copy(photo(faces_dir, AL, 2), top / "b.jpg")
        out = tmp_path / "faces.parquet"
        done = visage("embed", tmp_path, "-o", out, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["images"] == 2
        sources = set(pq.read_table(out).column("source").to_pylist())
        assert sources == {str(top / "b.jpg"), f"{bottom}/a\\xff.jpg"}

        doc = enroll(tmp_path, tmp_path / "v.db")
        assert doc["enrolled"] == 1
        assert any(s["path"] == str(top / "d") for s in doc["skipped"])
    finally:
        _unnest(top)


@pytest.fixture
def names_db(tmp_path: Path) -> Path:
    """A store whose persons, consent records and audit actor are written in Rich markup."""
    from visage.gallery import Gallery

    db = tmp_path / "v.db"
    with Gallery(db, actor="[red]x[/red]") as g:
        g.create_collection("demo")
        for name, ext in (("Mallory [/]", "m1"), ("[link=http://x]y[/link]", "[bold]m2[/bold]"),
                          ("[conceal]hidden[/conceal]", None)):  # fmt: skip
            person = g.add_person("demo", name, external_id=ext)
            g.grant_consent("demo", person.id, basis="consent", granted_by="[red]x[/red]")
    return db


def test_stored_names_are_printed_literally_not_as_markup(names_db: Path) -> None:
    """Item 8: `Mallory [/]` crashed `visage persons list` (MarkupError) and `[link=…]`,
    `[conceal]` were interpreted. Every stored string is now shown as it is."""
    done = visage("persons", "list", "-c", "demo", "--db", names_db)
    assert done.returncode == 0, done.stderr
    for text in ("Mallory [/]", "[link=http://x]y[/link]", "[bold]m2[/bold]",
                 "[conceal]hidden[/conceal]"):  # fmt: skip
        assert text in done.stdout, done.stdout
    shown = visage("persons", "show", "m1", "-c", "demo", "--db", names_db)
    assert shown.returncode == 0 and "display_name: Mallory [/]" in shown.stdout
    assert "[red]x[/red]" in shown.stdout
    audit = visage("audit", "show", "--db", names_db)
    assert audit.returncode == 0
    assert "[red]x[/red]" in audit.stdout and "external_id=[bold]m2[/bold]" in audit.stdout


def test_export_never_writes_through_a_planted_link(names_db: Path, tmp_path: Path) -> None:
    """Item 6: a symlink planted at ``out.jsonl.tmp`` received the whole export. The export
    now goes to a new owner-only file (O_CREAT|O_EXCL|O_NOFOLLOW, 0600) beside the target."""
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    planted = shared / "out.jsonl.tmp"
    planted.symlink_to(victim)
    out = shared / "out.jsonl"

    done = visage("export", "-c", "demo", "-o", out, "--db", names_db, "--json")
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "keep me\n"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    header = json.loads(out.read_text().splitlines()[0])
    assert header["collection"] == "demo" and header["persons"] == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and not out.is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == ["out.jsonl", "out.jsonl.tmp"]


def test_export_into_a_missing_folder_is_one_error_line(names_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "out.jsonl"
    done = visage("export", "-c", "demo", "-o", out, "--db", names_db)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot write {out}: No such file or directory"


def test_a_store_from_a_newer_visage_is_one_error_line(names_db: Path, tmp_path: Path) -> None:
    """A store migrated by a newer Visage (a revision this one has never heard of): every
    command that opens it, ``migrate`` too, says so in one line, where alembic's ResolutionError
    came out as a traceback; the store is left as it was."""
    db = tmp_path / "newer.db"
    shutil.copyfile(names_db, db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    for args in (("migrate",), ("export", "-c", "demo", "-o", tmp_path / "out.jsonl")):
        done = visage(*args, "--db", db)
        assert done.returncode == 1, (args, done.stdout)
        assert "revision 0099_from_the_future, which this Visage does not know" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0099_from_the_future",)
        ]
    assert not (tmp_path / "out.jsonl").exists()
