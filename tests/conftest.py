"""Shared fixtures: the labelled photos in ``$VISAGE_FACES`` (default ``../shared/faces``).

Photo tests skip with a message naming VISAGE_FACES when the photos are absent, and fail instead
under ``VISAGE_REQUIRE_FACES=1`` (``make test`` sets it: CI is never green by skipping).
Embedding the whole set costs about a minute on 2 cores, so it is done once per session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def two_face_photo(larger: Path, smaller: Path, out: Path) -> Path:
    """A 520x250 JPEG of two LFW photos side by side: ``larger``'s at full size on the left (its
    face is face 0, the largest), ``smaller``'s at 80% on the right (face 1)."""
    from PIL import Image

    canvas = Image.new("RGB", (520, 250), (120, 120, 120))
    canvas.paste(Image.open(larger).convert("RGB"), (0, 0))
    canvas.paste(Image.open(smaller).convert("RGB").resize((200, 200)), (300, 25))
    canvas.save(out, quality=92)
    return out
