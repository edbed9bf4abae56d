"""The gallery on real photos ($VISAGE_FACES): accuracy targets and the photo enrollment rules.

Enrolls the first acceptable photo of each of the 60 ``people/`` (the first photo, unless the
quality gate refuses it), identifies their other photos (rank-1 >= 98%) and the 150
``distractors/`` (``unknown`` in >= 98% at the collection's 1%-FPIR threshold). Embeddings come from the
session-wide ``embedded`` fixture, so the photos are embedded once per test run.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from visage.errors import AmbiguousFace, InvalidImage, NoFace
from visage.gallery import Gallery, PoorQuality

from ..conftest import EmbeddedSet


def _people(embedded: EmbeddedSet) -> dict[str, list[str]]:
    """Photos with a labelled face, per person, in file order."""
    people: dict[str, list[str]] = defaultdict(list)
    for source in sorted(embedded.labelled):
        if "/people/" in source:
            people[Path(source).parent.name].append(source)
    return people


@pytest.fixture
def photo_gallery(db_url: str, tmp_path: Path) -> Gallery:
    g = Gallery(db_url, index_dir=tmp_path / "index", actor="photo-test")
    g.create_collection("lfw")
    return g


def test_identify_people_and_reject_distractors(
    photo_gallery: Gallery, embedded: EmbeddedSet
) -> None:
    g = photo_gallery
    people = _people(embedded)
    assert len(people) == 60
    enrolled_from: dict[str, str] = {}
    for name, sources in people.items():
        person = g.add_person("lfw", name.replace("_", " "), external_id=name)
        g.grant_consent("lfw", person.id, basis="consent", granted_by="test")
        for source in sources:
            try:
                g.enroll("lfw", person.id, embedded.labelled[source])
            except PoorQuality:
                continue
            enrolled_from[name] = source
            break
    assert len(enrolled_from) == 60
    assert sum(enrolled_from[n] != s[0] for n, s in people.items()) <= 3  # few first photos refused

    hits = within = total = 0
    for name, sources in people.items():
        for source in sources:
            if source == enrolled_from[name]:
                continue
            result = g.identify("lfw", embedded.labelled[source], k=3)
            total += 1
            top = result.candidates[0]
            hits += top.external_id == name
            within += top.external_id == name and top.same
    assert total >= 300
    # Measured less about one standard error: rank-1 99.0% (SE 0.5%); both first and within
    # the collection's bar (1% FPIR at 60 templates, margin rule; issue 16) 78.6% (SE 2.1%),
    # distractors unknown 99.3% (SE 0.7%). At the fixed 0.3764 they were 89.1% and 96.0%.
    assert hits / total >= 0.984, f"rank-1 {hits / total:.3f} over {total} probes"
    assert within / total >= 0.765, f"identified within threshold {within / total:.3f}"

    distractors = [s for s in embedded.labelled if "/distractors/" in s]
    assert len(distractors) >= 140
    unknown = sum(g.identify("lfw", embedded.labelled[s]).unknown for s in distractors)
    assert unknown / len(distractors) >= 0.98, f"unknown {unknown}/{len(distractors)}"
    assert g.verify_audit().ok
    g.close()


def test_photo_enrollment_rules(
    photo_gallery: Gallery, embedded: EmbeddedSet, faces_dir: Path, tmp_path: Path
) -> None:
    g = photo_gallery
    crowded = next(
        s
        for s, r in sorted(embedded.results.items())
        if "/people/" in s
        and len(r.faces) > 1
        and s in embedded.labelled
        and embedded.labelled[s].quality.acceptable
    )
    clear = tmp_path / "clear.jpg"  # passes the gate (tests/test_quality.py); blurred, it fails
    Image.open(faces_dir / "people" / "Al_Sharpton" / "Al_Sharpton_0001.jpg").save(clear)
    poor = tmp_path / "blurred.jpg"
    Image.open(clear).filter(ImageFilter.GaussianBlur(2)).save(poor)
    person = g.add_person("lfw", "Someone")
    g.grant_consent("lfw", person.id, basis="consent", granted_by="test")

    with pytest.raises(AmbiguousFace, match="faces found"):
        g.enroll("lfw", person.id, crowded)
    first = g.enroll("lfw", person.id, crowded, face="center")
    assert first.created
    assert first.source_sha256 == hashlib.sha256(Path(crowded).read_bytes()).hexdigest()
    assert not g.enroll("lfw", person.id, Path(crowded).read_bytes(), face="center").created

    assert g.enroll("lfw", person.id, clear).created
    with pytest.raises(PoorQuality) as refused:
        g.enroll("lfw", person.id, poor)
    assert len(refused.value.reasons) == 1, refused.value.reasons
    assert refused.value.reasons[0].startswith("blurred: sharpness ")

    blank = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank, format="PNG")
    with pytest.raises(NoFace):
        g.enroll("lfw", person.id, blank.getvalue())
    (tmp_path / "note.jpg").write_text("not a photo")
    with pytest.raises(InvalidImage):
        g.identify("lfw", tmp_path / "note.jpg")

    result = g.identify("lfw", crowded, face="center")
    assert result.best is not None and result.best.person_id == person.id
    assert result.best.distance < 1e-3  # the same photo, embedded again
    g.close()
