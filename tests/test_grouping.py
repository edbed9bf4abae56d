"""Grouping by person without a gallery: precision must hold as the set grows."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import stat
from html import escape
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import visage
from tests.conftest import EmbeddedSet, LabelledFaces, person_of
from tests.test_cli_hostile import visage as run_cli
from visage.cli import app
from visage.decision import normalize
from visage.eval.metrics import bcubed
from visage.grouping import Grouping, edge_threshold, expected_precision, extend, group

MODEL = "dlib_resnet_v1"


def bcubed_f(groups: visage.grouping.Grouping, truth: list[str]) -> float:
    return bcubed(groups.labels(), truth).f


def test_the_size_aware_rule_groups_the_shared_photos(embedded: EmbeddedSet) -> None:
    """The labelled faces of people/ and distractors/ (~590 faces, 210 people): BCubed F at
    least 0.98 (0.990 measured) and better than the fixed 1:1 threshold's, the control that
    merges people (docs/accuracy.md)."""
    sources = sorted(embedded.labelled)
    faces = [embedded.labelled[s] for s in sources]
    truth = [person_of(s) for s in sources]
    adaptive = bcubed_f(visage.group(faces), truth)
    fixed = bcubed_f(group(np.stack([f.embedding for f in faces]), 0.3764), truth)
    assert adaptive >= 0.98, adaptive  # 0.990 measured
    assert adaptive > fixed, (adaptive, fixed)


def test_four_thousand_faces_group_at_f_095(every_face: LabelledFaces) -> None:
    """Every labelled face of the shared photos (3,877 of 2,521 people, 1 to 8 photos each):
    the default rule's BCubed F is at least 0.95 (0.964 measured) with precision at least 0.97
    (0.981; without the hub correction 0.956, F 0.950), where the fixed 1:1 threshold merges
    people (F 0.779, precision 0.644), the positive control (docs/accuracy.md)."""
    sizes = {who: every_face.truth.count(who) for who in set(every_face.truth)}
    assert len(every_face.truth) >= 3800 and min(sizes.values()) == 1 and max(sizes.values()) >= 8
    found = bcubed(visage.group(every_face.vectors).labels(), every_face.truth)
    fixed = bcubed(group(every_face.vectors, 0.3764).labels(), every_face.truth)
    assert fixed.precision < 0.75, fixed  # the control: a per-comparison threshold merges people
    assert found.f >= 0.95 and found.precision >= 0.97, found


def test_the_stated_precision_is_the_measured_one(every_face: LabelledFaces) -> None:
    """On every labelled face of the shared photos (3,877), the expected BCubed precision each
    grouping states is within 0.015 of the precision measured against the true names at the
    size-aware threshold (0.992 stated, 0.981 measured) and tighter ones (0.33: 0.997, 0.993;
    0.30: 1.000, 0.998), and it falls with the measured one where a threshold merges people
    (the fixed 1:1 0.3764: 0.579 stated, 0.647 measured): it follows the edge rule rather than
    being one fixed claim (docs/accuracy.md)."""
    vectors, truth = every_face.vectors, every_face.truth
    stated, measured = [], []
    for cut in (edge_threshold(len(truth), MODEL).threshold, 0.33, 0.30, 0.3764):
        found = group(vectors, cut)
        expected = expected_precision(found, cut, MODEL)
        assert expected is not None
        stated.append(expected.precision)
        measured.append(bcubed(found.labels(), truth).precision)
    assert measured[3] < 0.7 and stated[3] < 0.7, (stated, measured)  # a poor rule is told
    assert all(abs(s - m) <= 0.015 for s, m in zip(stated[:3], measured[:3])), (stated, measured)


def test_the_edge_threshold_tightens_as_the_set_grows() -> None:
    sizes = [10, 100, 1000, 10_000]
    cuts = [edge_threshold(n, "dlib_resnet_v1").threshold for n in sizes]
    assert all(a > b for a, b in pairwise(cuts)), cuts
    assert cuts[-1] < 0.3764 < cuts[0] + 0.1


def test_a_bridge_face_does_not_merge_two_people() -> None:
    """Two tight groups and one face within the threshold of both: Chinese whispers keeps two
    groups (connected components would merge them through the bridge)."""
    rng = np.random.default_rng(3)
    a, c = np.linalg.qr(rng.standard_normal((128, 2)))[0].T.astype(np.float32)
    theta = 2 * np.arcsin(0.3)  # the two people's centres are 0.6 apart
    b = normalize(a * np.cos(theta) + c * np.sin(theta))
    ones = normalize(a + 0.02 * rng.standard_normal((8, 128)).astype(np.float32))
    twos = normalize(b + 0.02 * rng.standard_normal((8, 128)).astype(np.float32))
    bridge = normalize((a + b) / 2)[None]
    vectors = np.concatenate([ones, twos, bridge])
    threshold = 0.42
    cross = np.linalg.norm(ones[:, None] - twos[None], axis=2)
    assert (np.linalg.norm(ones - bridge, axis=1) < threshold).all()  # the bridge reaches A
    assert (np.linalg.norm(twos - bridge, axis=1) < threshold).all()  # ... and B
    assert cross.min() > threshold  # but no face of A is near a face of B
    found = group(vectors, threshold)
    big = [set(g) for g in found.groups if len(g) >= 8]
    assert len(big) == 2 and not (big[0] & big[1]), found.groups


def test_cli_groups_a_folder_of_photos(tmp_path: Path, people_photos: list[Path]) -> None:
    by_person: dict[str, list[Path]] = {}
    for p in people_photos:
        by_person.setdefault(p.parent.name, []).append(p)
    chosen = [photos[:3] for photos in by_person.values() if len(photos) >= 3][:2]
    folder = tmp_path / "photos"
    folder.mkdir()
    for photos in chosen:
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
    result = CliRunner().invoke(app, ["group", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["faces"] >= 6 and "FPIR" in doc["rule"]
    expected = doc["expected"]  # the precision to expect, as numbers
    assert set(expected) == {"bcubed_precision", "false_edges_per_face"}, expected
    assert 0.5 <= expected["bcubed_precision"] <= 1.0 and 0 < expected["false_edges_per_face"] < 1
    named = [{Path(m["photo"]).name.rsplit("_", 1)[0] for m in g} for g in doc["groups"]]
    assert all(len(n) == 1 for n in named), named  # a group never mixes the two people
    assert {next(iter(n)) for n in named if n} >= {photos[0].parent.name for photos in chosen}


def _copy_people(people_photos: list[Path], folder: Path, persons: int, start: int, stop: int) -> None:
    """Photos ``start:stop`` of the first ``persons`` people with at least ``stop`` photos."""
    by_person: dict[str, list[Path]] = {}
    for p in people_photos:
        by_person.setdefault(p.parent.name, []).append(p)
    chosen = [photos[start:stop] for photos in by_person.values() if len(photos) >= stop]
    folder.mkdir(parents=True, exist_ok=True)
    for photos in chosen[:persons]:
        for p in photos:
            shutil.copyfile(p, folder / p.name)


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_contact_sheet_is_one_inert_page_of_thumbnails(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    """File names are hostile input: a photo named as an HTML tag with a script handler, and
    one with quotes, are captioned as text; the page loads nothing from anywhere, every image is
    an inline JPEG thumbnail, and it states the rule and the precision to expect."""
    folder = tmp_path / "photos"
    _copy_people(people_photos, folder, persons=2, start=0, stop=3)
    hostile = ["<img src=x onerror=alert(1)>.jpg", "\"quote'.jpg"]
    for name, source in zip(hostile, sorted(folder.iterdir())):
        shutil.copyfile(source, folder / name)
    out = tmp_path / "sheet"
    out.mkdir()
    done = run_cli("group", folder, "--sheet", out / "sheet.html", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    page = (out / "sheet.html").read_text("utf-8")
    parser = _Tags()
    parser.feed(page)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == doc["faces"] == 8  # positive control: a thumbnail per face
    assert "Group 1" in page and "In no group" in page
    assert escape(doc["rule"]) in page
    assert f"BCubed precision {doc['expected']['bcubed_precision']:.3f}" in page
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page  # captioned as text ...
    assert "&quot;quote&#x27;.jpg" in page
    assert "<img src=x" not in page and "\"quote'" not in page  # ... never as markup
    assert {tag for tag, _ in parser.tags} <= {
        "html", "meta", "title", "style", "head", "body", "h1", "h2", "p", "b", "section",
        "div", "figure", "img", "figcaption", "span", "ul", "li"}  # fmt: skip
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]
    assert all(str(a["src"]).startswith("data:image/jpeg;base64,") for a in images)
    thumb = Image.open(io.BytesIO(base64.b64decode(str(images[0]["src"]).split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) <= 96
    outside = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"//|https?:|ftp:|file:|url\(|href|@import", outside, re.IGNORECASE)
    assert "default-src 'none'" in page  # and a policy that would block one
    assert stat.S_IMODE((out / "sheet.html").stat().st_mode) == 0o600
    assert [p.name for p in out.iterdir()] == ["sheet.html"]  # no temporary file, no cache


def _grown_and_whole(vectors: np.ndarray, first_rows: list[int], truth: list[str]) -> tuple[float, float, Grouping, Grouping]:
    """BCubed F of grouping ``first_rows`` then extending with the other rows, and of grouping
    all rows at once; and the two groupings (rows numbered first rows first)."""
    rest = [r for r in range(len(vectors)) if r not in set(first_rows)]
    order = first_rows + rest
    ordered, who = vectors[order], [truth[r] for r in order]
    first = group(ordered[: len(first_rows)], edge_threshold(len(first_rows), MODEL).threshold)
    whole_cut = edge_threshold(len(order), MODEL).threshold
    grown = extend(ordered[: len(first_rows)], first, ordered[len(first_rows) :], whole_cut)
    return bcubed_f(grown, who), bcubed_f(group(ordered, whole_cut), who), first, grown


def test_extending_a_grouping_matches_grouping_everything(embedded: EmbeddedSet) -> None:
    """The first 300 labelled faces by path (150 of distractors/, 150 of people/): grouping
    the distractors, then adding the people/ photos (a new folder of other people) with
    :func:`extend`, scores within 0.02 BCubed F of grouping all 300 at once (-0.002 measured),
    and every first group is kept whole. Interleaved halves (every other photo, so each
    person's faces arrive in both) stay within 0.04 (0.031 measured): the first grouping, with
    half of each person's faces, merges more, and its groups are kept (docs/accuracy.md)."""
    sources = sorted(embedded.labelled)[:300]
    vectors = np.stack([embedded.labelled[s].embedding for s in sources])
    truth = [person_of(s) for s in sources]
    grown_f, whole_f, first, grown = _grown_and_whole(vectors, list(range(150)), truth)
    assert whole_f >= 0.95, whole_f  # positive control: the one-shot grouping is good
    assert abs(grown_f - whole_f) <= 0.02, (grown_f, whole_f)
    assert first.groups and len(grown.groups) >= len(first.groups) + 15
    kept = [set(g) for g in grown.groups]
    assert all(any(set(g) <= k for k in kept) for g in first.groups)
    assert sorted([r for g in grown.groups for r in g] + grown.messy) == list(range(300))
    grown_f, whole_f, *_ = _grown_and_whole(vectors, list(range(0, 300, 2)), truth)
    assert abs(grown_f - whole_f) <= 0.04, (grown_f, whole_f)


def test_new_photos_join_a_saved_grouping(tmp_path: Path, people_photos: list[Path]) -> None:
    """``--state`` saves the grouping (owner-only: embeddings are biometric); ``--onto`` adds
    new photos of the same people to their groups and rewrites the state; a file holding no
    embeddings (``--json`` output) or not written by visage is one error line."""
    _copy_people(people_photos, tmp_path / "a", persons=2, start=0, stop=3)
    _copy_people(people_photos, tmp_path / "b", persons=2, start=3, stop=5)
    state = tmp_path / "groups.json"
    first = run_cli("group", tmp_path / "a", "--state", state, "--json")
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved["faces"] == 6 and len(saved["groups"]) == 2
    assert all("embedding" in m for g in saved["groups"] for m in g)
    assert "embedding" not in json.dumps(json.loads(first.stdout))  # stdout: no biometrics
    grown = run_cli("group", tmp_path / "b", "--onto", state, "--json")
    assert grown.returncode == 0, grown.stderr
    doc = json.loads(grown.stdout)
    assert doc["faces"] == 10 and len(doc["groups"]) == 2 and not doc["messy"]
    for g in doc["groups"]:
        people = {Path(m["photo"]).name.rsplit("_", 1)[0] for m in g}
        folders = {Path(m["photo"]).parent.name for m in g}
        assert len(people) == 1 and folders == {"a", "b"}, g  # old faces kept, new ones joined
    assert json.loads(state.read_text())["faces"] == 10
    again = run_cli("group", tmp_path / "b", "--onto", state, "--json")
    assert json.loads(again.stdout)["faces"] == 10  # photos already in it are not added twice
    plain = tmp_path / "plain.json"
    plain.write_text(first.stdout)
    refused = run_cli("group", tmp_path / "b", "--onto", plain)
    assert refused.returncode == 1 and "holds no embeddings" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "other.json"
    foreign.write_text('{"groups": []}')
    refused = run_cli("group", tmp_path / "b", "--onto", foreign)
    assert refused.returncode == 1 and "not a grouping written by visage" in refused.stderr


def _audit(db: Path, action: str) -> list[dict]:
    done = run_cli("audit", "show", "--db", db, "--action", action, "--json", "-n", "100")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_enroll_from_group_makes_one_consented_person(
    tmp_path: Path, people_photos: list[Path]
) -> None:
    """A group becomes a person through enrollment: a consent record, one ``enroll`` event per
    face, and identify then names that person in one of the group's photos. A face no longer at
    its stored box is refused (audited); bad input stops before anything is enrolled."""
    _copy_people(people_photos, tmp_path / "photos", persons=2, start=0, stop=3)
    state = tmp_path / "groups.json"
    assert run_cli("group", tmp_path / "photos", "--state", state).returncode == 0
    db = tmp_path / "g.db"
    consent = ("--basis", "consent", "--granted-by", "Ada", "-c", "staff", "--db", db)
    for bad, why in (
        (("--group", "3"), "no group 3: the grouping has groups 1 to 2"),
        (("--group", "0"), "no group 0"),
    ):
        done = run_cli("enroll", "--from-group", state, *bad, "--external-id", "ada", *consent)
        assert done.returncode == 1 and why in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "photo.json"
    shutil.copyfile(people_photos[0], foreign)
    done = run_cli("enroll", "--from-group", foreign, "--group", "1", "--external-id", "ada",
                  *consent)  # fmt: skip
    assert done.returncode == 1 and "not a grouping written by visage" in done.stderr
    doc = json.loads(state.read_text())
    members = doc["groups"][0]
    gone = tmp_path / "moved.json"
    missing = json.loads(state.read_text())
    missing["groups"][0][0]["photo"] = str(tmp_path / "nowhere.jpg")
    gone.write_text(json.dumps(missing))
    done = run_cli("enroll", "--from-group", gone, "--group", "1", "--external-id", "ada", *consent)
    assert done.returncode == 1 and "nowhere.jpg: no such photo" in done.stderr
    assert not db.exists() or not _audit(db, "enroll")  # nothing enrolled by any bad input

    shifted = json.loads(state.read_text())
    shifted["groups"][0][-1]["box"] = [0, 0, 30, 30]  # a face the photo no longer has there
    moved = tmp_path / "shifted.json"
    moved.write_text(json.dumps(shifted))
    done = run_cli("enroll", "--from-group", moved, "--group", "1", "--external-id", "ada",
                  "--person-name", "Ada", *consent, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["enrolled"] == len(members) - 1 and result["new_persons"] == 1
    assert result["refused"] == 1 and "no face at [0, 0, 30, 30]" in result["photos"][-1]["reason"]
    enrolled = _audit(db, "enroll")
    assert len(enrolled) == len(members) - 1
    assert len(_audit(db, "enroll.refused")) == 1
    assert len(_audit(db, "consent.grant")) == 1
    probe = members[0]["photo"]
    found = run_cli("identify", probe, "-c", "staff", "--db", db, "--json")
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout)[0]["candidates"][0]
    assert best["external_id"] == "ada" and best["display_name"] == "Ada"
