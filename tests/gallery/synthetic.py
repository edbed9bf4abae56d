"""Synthetic embeddings for gallery tests: random unit vectors and noisy copies of them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from visage.decision import Calibration, normalize
from visage.gallery import Gallery

MODEL = "synthetic-128"
CALIBRATION = Calibration(
    model_id=MODEL,
    threshold=0.6,
    method="fixed",
    source="tests: random unit vectors are ~1.41 apart; noisy copies ~0.1-0.3",
    created="2026-11-29",
    n_genuine=0,
    n_impostor=0,
)


def unit_vectors(n: int, seed: int, dim: int = 128) -> npt.NDArray[np.float32]:
    """``n`` random unit vectors (independent ones are ~1.41 apart in 128-d)."""
    rng = np.random.default_rng(seed)
    return normalize(rng.standard_normal((n, dim)).astype(np.float32))


def near(vector: npt.NDArray[np.float32], scale: float, seed: int) -> npt.NDArray[np.float32]:
    """A noisy copy of ``vector`` (``scale`` 0.02 puts it ~0.23 away: the same person)."""
    rng = np.random.default_rng(seed)
    return normalize(vector + scale * rng.standard_normal(vector.shape).astype(np.float32))


def consented_person(g: Gallery, name: str, collection: str = "people") -> str:
    """Add a person with a valid consent record; returns the person id."""
    person = g.add_person(collection, name, external_id=name.lower())
    g.grant_consent(collection, person.id, basis="consent", granted_by=name)
    return person.id
