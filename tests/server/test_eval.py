"""``POST /v1/eval/verify`` over HTTP against a real server: a pairs file and a zip of photos
give the CLI's report and figures, the photos are deleted after the run, and every bad upload
is a 4xx problem saying what is wrong (never a 500, never a file left behind).

The server runs with ``eval_scratch`` in a folder the tests watch, and a 2 MiB body limit so
the over-size upload is cheap to send.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from visage.server.evaluation import MAX_EXTRACTED_BYTES, MAX_MEMBERS, MAX_PAIRS

from .conftest import Server, problem, served

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
