"""Edge fixtures: two people chosen from the labelled photos, a test video of them, a local
gallery that knows them (enrolled from their *other* photos) and a few distractor persons."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.edge.videos import crop, two_people
from visage.gallery import EmbeddingItem, Gallery
from visage.pipeline import Pipeline

COLLECTION = "edge"


@dataclass(frozen=True)
class Person:
    name: str
    photos: tuple[Path, ...]

    @property
    def video_photo(self) -> Path:
        return self.photos[0]

    @property
    def enroll_photos(self) -> tuple[Path, ...]:
        return self.photos[1:4]


@pytest.fixture(scope="session")
def edge_pipeline() -> Pipeline:
    """HOG without upsampling: faces in the test videos are 100 px or more."""
    return Pipeline(upsample=0)


@pytest.fixture(scope="session")
def cast(faces_dir: Path, edge_pipeline: Pipeline) -> list[Person]:
    """Up to six people with at least four photos whose first photo's crop shows one clear face;
    the first two walk through the test videos, the others are distractors in the gallery."""
    chosen: list[Person] = []
    for folder in sorted((faces_dir / "people").iterdir()):
        photos = tuple(sorted(folder.glob("*.jpg")))
        if len(photos) < 4:
            continue
        faces = edge_pipeline.detect(np.ascontiguousarray(crop(photos[0])))
        if len(faces) == 1 and faces[0].quality.acceptable:
            chosen.append(Person(folder.name, photos))
        if len(chosen) == 6:
            break
    if len(chosen) < 2:
        pytest.skip("fewer than two usable people in the labelled photos")
    return chosen


@pytest.fixture(scope="session")
def walkers(cast: list[Person]) -> tuple[Person, Person]:
    return cast[0], cast[1]


@pytest.fixture(scope="session")
def two_people_video(
    tmp_path_factory: pytest.TempPathFactory, walkers: tuple[Person, Person]
) -> Path:
    a, b = walkers
    return two_people(tmp_path_factory.mktemp("video") / "two.avi", a.video_photo, b.video_photo)


def enrollment_items(pipeline: Pipeline, cast: list[Person]) -> dict[str, list[np.ndarray]]:
    """Each person's embeddings from their enrollment photos (the largest face of each)."""
    vectors: dict[str, list[np.ndarray]] = {}
    for person in cast:
        for result in pipeline.embed_many(person.enroll_photos):
            if result.faces and result.faces[0].embedding is not None:
                vectors.setdefault(person.name, []).append(result.faces[0].embedding)
    return vectors


@pytest.fixture(scope="session")
def enrollment(edge_pipeline: Pipeline, cast: list[Person]) -> dict[str, list[np.ndarray]]:
    return enrollment_items(edge_pipeline, cast)


@pytest.fixture
def local_gallery(
    tmp_path: Path, edge_pipeline: Pipeline, enrollment: dict[str, list[np.ndarray]]
) -> Iterator[Gallery]:
    """A SQLite gallery with collection ``edge``: every cast member, consented and enrolled;
    each person's external id is their name."""
    with Gallery(tmp_path / "gallery.db", pipeline=edge_pipeline) as gallery:
        gallery.create_collection(COLLECTION)
        for name, vectors in enrollment.items():
            person = gallery.add_person(COLLECTION, name.replace("_", " "), external_id=name)
            gallery.grant_consent(COLLECTION, person.id, basis="consent", granted_by="test")
            gallery.enroll_many(COLLECTION, [EmbeddingItem(person.id, v) for v in vectors])
        yield gallery
