"""``POST /v1/eval/verify`` and ``/identify`` over HTTP against a real server: a pairs file
(or a gallery and a probe list) and a zip of photos give the CLI's report and figures, the
photos are deleted after the run, every bad upload is a 4xx problem saying what is wrong (never
a 500, never a file left behind), and the last report is a file beside the store that a
restarted server still answers.

The server runs with ``eval_scratch`` in a folder the tests watch, and a 2 MiB body limit so
the over-size upload is cheap to send.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from visage.server.evaluation import (
    MAX_ENTRIES,
    MAX_EXTRACTED_BYTES,
    MAX_MEMBERS,
    MAX_PAIRS,
    REPORT_FILE,
)

from .conftest import Server, problem, served, start_server, stop_server

BODY_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval-scratch")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, scratch: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("eval-server")
    with served(folder, eval_scratch=str(scratch), max_body_bytes=str(BODY_LIMIT)) as running:
        yield running


def small_protocol(faces_dir: Path, folder: Path, per_fold: int = 3) -> tuple[Path, Path]:
    """An LFW pairs file of 2 folds of ``per_fold`` same and ``per_fold`` different pairs taken
    from ``pairs_dev.txt``, and a zip of the photos it names inside a ``people/`` folder (as
    ``zip -r people.zip people`` makes it)."""
    head, *lines = (faces_dir / "pairs_dev.txt").read_text().splitlines()
    side = int(head.split()[1])
    chosen = [
        line
        for fold in range(2)
        for start in (fold * 2 * side, fold * 2 * side + side)
        for line in lines[start : start + per_fold]
    ]
    photos: set[str] = set()
    for line in chosen:
        f = line.split()
        named = [(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]
        photos |= {f"{name}/{name}_{int(i):04d}.jpg" for name, i in named}
    pairs = folder / "pairs.txt"
    pairs.write_text(f"2\t{per_fold}\n" + "\n".join(chosen) + "\n")
    archive = folder / "people.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for photo in sorted(photos):
            z.write(faces_dir / "people" / photo, f"people/{photo}")
    return pairs, archive


@pytest.fixture(scope="module")
def protocol(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return small_protocol(faces_dir, tmp_path_factory.mktemp("protocol"))


def post(
    server: Server,
    pairs: bytes,
    photos: bytes,
    *,
    name: str = "pairs.txt",
    token: str | None = None,
) -> httpx.Response:
    with server.client(token or server.admin) as client:
        return client.post(
            "/v1/eval/verify",
            files={"pairs": (name, pairs), "photos": ("photos.zip", photos)},
        )


def zipped(*members: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    """A zip of ``members`` in order, each name exactly as given (``ZipInfo()`` would rewrite
    a backslash); a name may repeat."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for member, data in members:
            info = member if isinstance(member, zipfile.ZipInfo) else zipfile.ZipInfo("x")
            if isinstance(member, str):
                info.filename = member
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def test_nothing_to_show_before_a_run(server: Server) -> None:
    with server.client(server.admin) as client:
        problem(client.get("/v1/eval/last"), 404)
        problem(client.get("/v1/eval/last/roc.png"), 404)


def test_a_run_gives_the_clis_report_and_figures_and_keeps_no_photo(
    server: Server, protocol: tuple[Path, Path], scratch: Path, tmp_path: Path
) -> None:
    """The run extracts under ``eval_scratch`` (seen while it runs: the control), the folder is
    empty after it, and the numbers are those ``visage eval verify --json`` prints."""
    pairs, archive = protocol
    answer: list[httpx.Response] = []
    running = threading.Thread(
        target=lambda: answer.append(post(server, pairs.read_bytes(), archive.read_bytes()))
    )
    running.start()
    seen: set[str] = set()
    while running.is_alive():
        seen |= {p.name for p in scratch.iterdir()}
        running.join(0.005)
    assert any(name.startswith("visage-eval-") for name in seen), seen
    assert list(scratch.iterdir()) == []
    response = answer[0]
    assert response.status_code == 200, response.text
    out = response.json()
    report = out["report"]
    assert report["protocol"] == "pairs.txt"
    assert report["n_genuine"] + report["n_impostor"] == 12
    assert 0.5 <= report["accuracy"]["mean"] <= 1.0
    assert all(not m["a"].startswith("/") for m in report["misses"])  # named as in the zip

    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path)
    cli = subprocess.run(
        [sys.executable, "-m", "visage", "eval", "verify", str(pairs)]
        + ["--root", str(tmp_path / "people"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(cli.stdout)
    paths = {"misses", "written"}  # temporary against the CLI's own paths
    assert {k: v for k, v in report.items() if k not in paths} == {
        k: v for k, v in expected.items() if k not in paths
    }
    assert [m["a"] for m in report["misses"]] == [
        str(Path(m["a"]).relative_to(tmp_path / "people")) for m in expected["misses"]
    ]

    with server.client(server.admin) as client:
        assert client.get("/v1/eval/last").json() == out
        assert set(out["figures"]) == {"roc", "det", "scores"}
        for url in out["figures"].values():
            png = client.get(url)
            assert png.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(png.content)).size[0] > 100
        problem(client.get("/v1/eval/last/cmc.png"), 404)
        events = client.get("/v1/audit", params={"action": "eval.verify"}).json()["items"]
    assert events[-1]["seq"] == out["audit_seq"]
    assert events[-1]["actor"] == server.admin.split(".")[0]


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("people/link.jpg")
    info.external_attr = 0o120777 << 16
    return info


def _encrypted(photo: bytes) -> bytes:
    """A zip whose one member is marked encrypted (flag bit 0 of its central directory entry;
    zipfile cannot write one), which zipfile will not open without a password."""
    data = bytearray(zipped(("people/secret.jpg", photo)))
    flags = data.index(b"PK\x01\x02") + 8
    data[flags] |= 0x1
    return bytes(data)


def _corrupt(archive: bytes) -> bytes:
    """The zip with bytes inside its first member's compressed data flipped."""
    broken = bytearray(archive)
    for at in range(200, 260):
        broken[at] ^= 0xFF
    return bytes(broken)


def _bomb() -> bytes:
    """One member of zeros just over the extraction limit (a few hundred KB compressed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros.jpg", "w") as f:
        block = bytes(1024 * 1024)
        for _ in range(MAX_EXTRACTED_BYTES // len(block) + 1):
            f.write(block)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the "twice" archive, on purpose
def test_bad_archives_are_refused_with_their_reason_and_leave_nothing(
    server: Server, protocol: tuple[Path, Path], scratch: Path
) -> None:
    pairs, archive = protocol
    text = pairs.read_bytes()
    with zipfile.ZipFile(archive) as z:
        photo = z.read(z.namelist()[0])
    cases = {
        "not a zip": (b"just text, not an archive", "not a zip archive"),
        "truncated": (archive.read_bytes()[:-100], "not a zip archive"),
        "corrupt": (_corrupt(archive.read_bytes()), "corrupt"),
        "parent": (zipped(("../evil.jpg", photo)), "not a relative path"),
        "absolute": (zipped(("/tmp/evil.jpg", photo)), "not a relative path"),
        "backslash": (zipped(("..\\evil.jpg", photo)), "not a relative path"),
        "symlink": (zipped((_symlink(), b"/etc/passwd")), "symbolic link"),
        "encrypted": (_encrypted(photo), "password required"),
        "twice": (zipped(("a.jpg", photo), ("a.jpg", photo)), "appears twice"),
        "bomb": (_bomb(), f"more than {MAX_EXTRACTED_BYTES:,} bytes"),
        "members": (zipped(*((f"{i}.jpg", b"") for i in range(MAX_MEMBERS + 1))), "entries"),
        "missing photos": (zipped(("people/x.jpg", photo)), "not in the archive"),
    }
    for case, (photos, reason) in cases.items():
        body = problem(post(server, text, photos), 422)
        assert reason in str(body["detail"]), (case, body)
        assert "visage-eval-" not in str(body["detail"]), (case, body)  # no temporary path
        assert list(scratch.iterdir()) == [], case


def test_bad_pairs_and_bodies_are_refused_with_their_reason(
    server: Server, protocol: tuple[Path, Path], scratch: Path
) -> None:
    pairs, archive = protocol
    photos = archive.read_bytes()
    many = "\n".join(f"people/a.jpg,people/b.jpg,{i % 2}" for i in range(MAX_PAIRS + 1))
    cases = {
        "garbage": (b"\x00\xff not pairs", "pairs.txt", "pairs.txt"),
        "out of the archive": (
            b"../../etc/hostname,people/a.jpg,1\nx.jpg,y.jpg,0\n",
            "p.csv",
            "not in the archive",
        ),
        "too many": (many.encode(), "many.csv", f"more than {MAX_PAIRS}"),
        "huge count": (b"9" * 5000 + b" 1\nA 1 2\n", "pairs.txt", "expected 'folds<TAB>pairs'"),
        "not ascii": ("1\t1\nA 1 \u00b2\nA 1 B 2\n".encode(), "pairs.txt", "is not a number"),
        "nul byte": (
            b"people/a\x00.jpg,people/b.jpg,1\nx.jpg,y.jpg,0\n",
            "p.csv",
            "not in the archive",
        ),
        "empty": (b"", "pairs.txt", "must not be empty"),
    }
    for case, (text, name, reason) in cases.items():
        body = problem(post(server, text, photos, name=name), 422)
        assert reason in str(body["detail"]), (case, body)
        assert list(scratch.iterdir()) == [], case
    with server.client(server.admin) as client:
        only = client.post("/v1/eval/verify", files={"pairs": ("p.txt", pairs.read_bytes())})
        assert "'photos'" in str(problem(only, 422)["detail"])
        empty = client.post(
            "/v1/eval/verify",
            content=b"",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert empty.status_code in (400, 422), empty.text
        problem(empty, empty.status_code)
        problem(client.post("/v1/eval/verify", content=b""), 415)
        big = client.post("/v1/eval/verify", files={"pairs": ("p.txt", b"x" * (BODY_LIMIT + 1))})
        problem(big, 413)
    problem(post(server, pairs.read_bytes(), photos, token=server.key(["identify"])), 403)


# ---------------------------------------------------------------- identification


def identification_lists(faces_dir: Path, folder: Path, mated: int = 6, strangers: int = 3
                         ) -> tuple[Path, Path, Path]:  # fmt: skip
    """A gallery list of the first photo of ``mated`` persons of ``people/``, a probe list of
    their second photo and of the first photo of ``strangers`` more persons (non-mated), and a
    zip of those photos inside a ``people/`` folder; the lists' paths are relative to it."""
    persons = sorted(p for p in (faces_dir / "people").iterdir() if p.is_dir())
    chosen = persons[: mated + strangers]
    gallery = [(p.name, f"{p.name}/{p.name}_0001.jpg") for p in chosen[:mated]]
    probes = [(p.name, f"{p.name}/{p.name}_0002.jpg") for p in chosen[:mated]] + [
        (p.name, f"{p.name}/{p.name}_0001.jpg") for p in chosen[mated:]
    ]
    lists = []
    for name, entries in (("gallery.txt", gallery), ("probes.txt", probes)):
        path = folder / name
        path.write_text("# person path\n" + "".join(f"{who} {photo}\n" for who, photo in entries))
        lists.append(path)
    archive = folder / "people.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for photo in sorted({photo for _, photo in gallery + probes}):
            z.write(faces_dir / "people" / photo, f"people/{photo}")
    return lists[0], lists[1], archive


@pytest.fixture(scope="module")
def lists(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return identification_lists(faces_dir, tmp_path_factory.mktemp("lists"))


def post_identify(
    server: Server,
    gallery: bytes,
    probes: bytes,
    photos: bytes,
    *,
    names: tuple[str, str] = ("gallery.txt", "probes.txt"),
) -> httpx.Response:
    with server.client(server.admin) as client:
        return client.post(
            "/v1/eval/identify",
            files={
                "gallery": (names[0], gallery),
                "probes": (names[1], probes),
                "photos": ("photos.zip", photos),
            },
        )


def cli_identify(gallery: Path, probes: Path, archive: Path, into: Path) -> dict[str, object]:
    """``visage eval identify --json`` on the lists, over the archive extracted into ``into``."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(into)
    cli = subprocess.run(
        [sys.executable, "-m", "visage", "eval", "identify", "--gallery", str(gallery)]
        + ["--probes", str(probes), "--root", str(into / "people"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    document: dict[str, object] = json.loads(cli.stdout)
    assert document.pop("written") == []
    return document


def test_an_identification_gives_the_clis_report_and_a_cmc_and_keeps_no_photo(
    server: Server, lists: tuple[Path, Path, Path], scratch: Path, tmp_path: Path
) -> None:
    gallery, probes, archive = lists
    response = post_identify(
        server, gallery.read_bytes(), probes.read_bytes(), archive.read_bytes()
    )
    assert response.status_code == 200, response.text
    assert list(scratch.iterdir()) == []  # photos, embeddings and the throw-away gallery gone
    out = response.json()
    assert out["kind"] == "identify"
    report = out["report"]
    assert (report["mated_searches"], report["nonmated_searches"], report["persons"]) == (6, 3, 6)
    assert report == cli_identify(gallery, probes, archive, tmp_path)

    assert "cmc" in out["figures"] and "roc" not in out["figures"]
    with server.client(server.admin) as client:
        assert client.get("/v1/eval/last").json() == out
        for url in out["figures"].values():
            png = client.get(url)
            assert png.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(png.content)).size[0] > 100
        problem(client.get("/v1/eval/last/roc.png"), 404)  # an identification draws no ROC
        events = client.get("/v1/audit", params={"action": "eval.identify"}).json()["items"]
    assert events[-1]["seq"] == out["audit_seq"]
    assert events[-1]["actor"] == server.admin.split(".")[0]


def _flat_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (250, 250), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


def test_bad_identification_uploads_are_refused_with_their_reason_and_leave_nothing(
    server: Server, lists: tuple[Path, Path, Path], scratch: Path
) -> None:
    gallery, probes, archive = lists
    g, p, photos = gallery.read_bytes(), probes.read_bytes(), archive.read_bytes()
    blank = zipped(("people/a.jpg", _flat_jpeg()), ("people/b.jpg", _flat_jpeg()))
    many = "".join(f"P{i} people/x.jpg\n" for i in range(MAX_ENTRIES)).encode()
    cases = {
        "no entries": (b"# nothing but a comment\n", p, photos, "gallery/gallery.txt: no entries"),
        "bad line": (g, b"just-a-name\n", photos, "probes/probes.txt:1: expected 'person path'"),
        "not in the archive": (b"A A/nobody.jpg\n", p, photos, "not in the archive"),
        "out of the archive": (b"A ../../../etc/hostname\n", p, photos, "not in the archive"),
        "absolute": (b"A /etc/hostname\n", p, photos, "not in the archive"),
        "no face": (b"A a.jpg\n", b"A b.jpg\n", blank, "no gallery photo has a face"),
        "no mated probe": (g, b"Nobody_Here " + g.split()[-1] + b"\n", photos,
                           "no probe is of a person in the gallery"),
        "too many": (many, p, photos, f"more than {MAX_ENTRIES}"),
        "not a zip": (g, p, b"not an archive", "not a zip archive"),
        "empty": (g, b"", photos, "must not be empty"),
    }  # fmt: skip
    for case, (gallery_text, probe_text, zipped_photos, reason) in cases.items():
        body = problem(post_identify(server, gallery_text, probe_text, zipped_photos), 422)
        assert reason in str(body["detail"]), (case, body)
        assert "visage-eval-" not in str(body["detail"]), (case, body)  # no temporary path
        assert list(scratch.iterdir()) == [], case
    with server.client(server.admin) as client:
        two = {"gallery": ("g.txt", g), "photos": ("p.zip", photos)}
        only = client.post("/v1/eval/identify", files=two)
        assert "'probes'" in str(problem(only, 422)["detail"])
        problem(client.post("/v1/eval/identify", content=b""), 415)


def _numbers_runs(value: object) -> list[int]:
    """The lengths of every list of numbers in a JSON document (an embedding would be 128)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers_runs(v)]
    if isinstance(value, list):
        inner = [n for v in value for n in _numbers_runs(v)]
        flat = all(isinstance(v, int | float) or v is None for v in value)
        return inner + ([len(value)] if flat else [])
    return []


def test_the_last_report_is_a_private_file_a_restarted_server_answers(
    faces_dir: Path, tmp_path: Path
) -> None:
    """An identification on one server process, that process stopped, a new one started on
    the same store: it answers the same report and CMC. The file beside the store is owner
    only and holds the report and PNGs, no list of numbers as long as an embedding."""
    gallery, probes, archive = identification_lists(faces_dir, tmp_path, mated=3, strangers=1)
    folder = tmp_path / "server"
    first = start_server(folder)
    try:
        response = post_identify(
            first, gallery.read_bytes(), probes.read_bytes(), archive.read_bytes()
        )
        assert response.status_code == 200, response.text
        out = response.json()
        with first.client(first.admin) as client:
            cmc = client.get("/v1/eval/last/cmc.png").content
    finally:
        stop_server(first)
    assert "Traceback" not in first.log_tail(100_000), first.log_tail()  # the log is reused below
    reports = first.db.with_name(first.db.name + ".eval")
    saved = reports / REPORT_FILE
    assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert [p.name for p in reports.iterdir()] == [REPORT_FILE]  # no temporary file left
    document = json.loads(saved.read_text())
    assert document["report"] == out["report"]
    assert max(_numbers_runs(document)) < 64, "no embedding-sized list of numbers"
    assert all(
        base64.b64decode(png).startswith(b"\x89PNG") for png in document["figures"].values()
    )

    second = start_server(folder)
    try:
        with second.client(second.admin) as client:
            assert client.get("/v1/eval/last").json() == out
            assert client.get("/v1/eval/last/cmc.png").content == cmc
    finally:
        stop_server(second)
    assert "Traceback" not in second.log_tail(100_000), second.log_tail()
