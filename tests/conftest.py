"""Shared fixtures: the labelled photos in ``$VISAGE_FACES`` (default ``../shared/faces``).

Photo tests skip with a message naming VISAGE_FACES when the photos are absent, and fail instead
under ``VISAGE_REQUIRE_FACES=1`` (``make test`` sets it: CI is never green by skipping).
Embedding the whole set costs about a minute on 2 cores, so it is done once per session.

``pg_server`` is a throw-away PostgreSQL cluster started once per session (``initdb`` +
``pg_ctl`` as the unprivileged ``postgres`` user when the tests run as root) on a free loopback
port, shared by the gallery and server tests; :func:`pg_database` makes a fresh database on it.
When no server binaries exist the PostgreSQL half is skipped with a message saying how to get
them.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from PIL import Image

from visage.imageio import load_image
from visage.models import make_detector
from visage.models.base import Box
from visage.models.weights import model_path
from visage.pipeline import Face, ImageResult, Pipeline, nearest_centre

REPO = Path(__file__).resolve().parents[1]


def faces_root() -> Path:
    return Path(os.environ.get("VISAGE_FACES") or REPO.parent / "shared" / "faces").resolve()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    root = faces_root()
    if not (root / "people").is_dir():
        message = f"labelled photos not found at {root}: set VISAGE_FACES to the faces folder"
        if os.environ.get("VISAGE_REQUIRE_FACES") == "1":  # `make test` (CI): never green by skipping
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def people_photos(faces_dir: Path) -> list[Path]:
    return sorted((faces_dir / "people").glob("*/*.jpg"))


@pytest.fixture(scope="session")
def distractor_photos(faces_dir: Path) -> list[Path]:
    return sorted((faces_dir / "distractors").glob("*.jpg"))


def central_face(result: ImageResult) -> Face | None:
    """The labelled face of an LFW photo: the detected face nearest the centre (within 40 px)."""
    if not result.faces:
        return None
    width, height = result.size or (250, 250)
    best = nearest_centre(result.faces, width, height)
    return best if best.centre_offset(width, height) <= 40 else None


@dataclass(frozen=True)
class EmbeddedSet:
    """Every photo's batch result and its labelled face, computed once per session."""

    results: dict[str, ImageResult]
    labelled: dict[str, Face]


@pytest.fixture(scope="session")
def embedded(people_photos: list[Path], distractor_photos: list[Path]) -> EmbeddedSet:
    paths = people_photos + distractor_photos
    results = {r.source: r for r in Pipeline().embed_many(paths, workers=2)}
    labelled = {s: f for s, r in results.items() if (f := central_face(r)) is not None}
    return EmbeddedSet(results=results, labelled=labelled)


@dataclass(frozen=True)
class DlibFace:
    """One face as dlib's own path gives it: 5-point landmarks and chip."""

    photo: Path
    marks: npt.NDArray[np.float32]  # the five landmarks, (x, y)
    chip: npt.NDArray[np.uint8]  # dlib.get_face_chip(image, shape, 150, 0.25)


@pytest.fixture(scope="session")
def dlib_faces(people_photos: list[Path]) -> list[DlibFace]:
    """dlib's own path on every people/ photo, decoded as face_recognition's ``load_image_file``
    (Pillow, RGB), HOG at one upsample: the faces the compat, alignment and ONNX tests hold
    Visage to, found once (~11 s)."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path("landmarks5")))
    faces = []
    for path in people_photos:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
        for rect in detector(img, 1):
            shape = predictor(img, rect)
            faces.append(DlibFace(
                photo=path,
                marks=np.array([(p.x, p.y) for p in shape.parts()], np.float32),
                chip=np.asarray(dlib.get_face_chip(img, shape, 150, 0.25)),
            ))  # fmt: skip
    return faces


@pytest.fixture(scope="session")
def dlib_descriptors(dlib_faces: list[DlibFace]) -> npt.NDArray[np.float64]:
    """dlib's ResNet descriptor of each of :func:`dlib_faces`' chips, one row a face: what
    ``face_recognition.face_encodings`` returns for them, computed once (~37 s: ~80 ms a face)."""
    encoder = dlib.face_recognition_model_v1(str(model_path("resnet")))
    return np.array(encoder.compute_face_descriptor([f.chip for f in dlib_faces]), np.float64)


@dataclass(frozen=True)
class LabelledFaces:
    """Labelled faces with their person's name, in path order."""

    sources: list[str]
    vectors: np.ndarray
    truth: list[str]


def person_of(source: str) -> str:
    """``people/Name/Name_0001.jpg`` and ``distractors/Name_0001.jpg`` are both ``Name``."""
    path = Path(source)
    return path.parent.name if path.parent.name not in ("strangers", "distractors") else (
        path.stem.rsplit("_", 1)[0]
    )


@pytest.fixture(scope="session")
def every_face(faces_dir: Path, embedded: EmbeddedSet) -> LabelledFaces:
    """The labelled face of every photo of calibration/, people/ and distractors/ (~3,900,
    groups of 1 to 8 photos a person), each photo once: 73 distractors are also in
    calibration/strangers. Embeds calibration/ (~3,400 photos, about a minute on 2 cores)."""
    calibration = sorted((faces_dir / "calibration").glob("**/*.jpg"))
    known = {Path(s).name for s in embedded.labelled}
    fresh = [p for p in calibration if p.name not in known]
    results = Pipeline().embed_many(fresh, workers=2)
    labelled = dict(embedded.labelled)
    labelled.update((r.source, f) for r in results if (f := central_face(r)) is not None)
    sources = sorted(labelled)
    vectors = np.stack([labelled[s].embedding for s in sources]).astype(np.float32)
    return LabelledFaces(sources, vectors, [person_of(s) for s in sources])


def two_face_photo(larger: Path, smaller: Path, out: Path) -> Path:
    """A 520x250 JPEG of two LFW photos side by side: ``larger``'s at full size on the left (its
    face is face 0, the largest), ``smaller``'s at 80% on the right (face 1)."""
    canvas = Image.new("RGB", (520, 250), (120, 120, 120))
    canvas.paste(Image.open(larger).convert("RGB"), (0, 0))
    canvas.paste(Image.open(smaller).convert("RGB").resize((200, 200)), (300, 25))
    canvas.save(out, quality=92)
    return out


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def group_photo(
    people_photos: list[Path], face: int, *, size: tuple[int, int] = (3000, 2000), count: int = 12
) -> tuple[npt.NDArray[np.uint8], list[Box]]:
    """A synthetic group photo ``size`` (width, height) of ``count`` shared faces in rows of 6,
    each HOG's box scaled to ``face`` pixels, pasted with 30% context on a smooth background
    (3000x2000: 400 pixels apart, rows 800 apart); and their boxes. For small faces in large
    photos, which the shared photos (one face each, 250x250) do not hold."""
    width, height = size
    rows = -(-count // 6)
    pitch_x, pitch_y = (width - 600) // 6, (height - 400) // rows
    rng = np.random.default_rng(17)
    coarse = rng.uniform(40, 215, (4, 6, 3)).astype(np.float32)
    canvas = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.uint8)
    hog, truth = make_detector("hog"), list[Box]()
    for path in people_photos[::8]:
        if len(truth) == count:
            break
        image = load_image(path)
        found = hog.detect(image)
        if len(found) != 1:
            continue
        left, top, right, bottom = found[0].box
        pad, scale = round(0.3 * (right - left)), face / (right - left)
        context = image[max(0, top - pad) : bottom + pad, max(0, left - pad) : right + pad]
        crop = cv2.resize(context, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        x, y = 300 + pitch_x * (len(truth) % 6), 500 + pitch_y * (len(truth) // 6)
        canvas[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        fx = x + round((left - max(0, left - pad)) * scale)
        fy = y + round((top - max(0, top - pad)) * scale)
        truth.append((fx, fy, fx + face, fy + face))
    assert len(truth) == count, f"only {len(truth)} single-face photos for {count} faces"
    return canvas, truth


def _pg_bin() -> Path | None:
    """The newest PostgreSQL bin directory holding initdb and pg_ctl."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A running throw-away PostgreSQL cluster; yields its server URL (no database part)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL tests skipped: no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH "
            "(install Debian's postgresql package; `make setup` does)"
        )
    root = Path(tempfile.mkdtemp(prefix="visage-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, user="postgres", group="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o700)
    data, port = root / "data", _free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True,
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
         "-o", options, "start"],
        check=True, capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False, capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def pg_database(server: str) -> Iterator[str]:
    """A new, empty database on ``server`` (``pg_server``'s URL), dropped afterwards; yields
    its SQLAlchemy URL."""
    admin = server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class MilvusServer:
    """A running Milvus Lite server: the ``uri`` to name (``milvus:<uri>``) and its data folder."""

    uri: str
    data: Path


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """``milvus-lite server`` on a free loopback port, once per module, stopped afterwards; the
    Milvus tests skip with the extra to install when milvus-lite is absent."""
    pytest.importorskip("milvus_lite", reason="pip install 'visage[milvus]'")
    pytest.importorskip("pymilvus", reason="pip install 'visage[milvus]'")
    data, port = tmp_path_factory.mktemp("milvus") / "milvus.db", _free_port()
    log = data.with_name("server.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "milvus-lite server did not start in 60 s"
                time.sleep(0.2)
        yield MilvusServer(f"http://127.0.0.1:{port}", data)
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate a server a test started; kill it if it has not gone in 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
