"""Gallery fixtures: every store test runs on SQLite and on a real PostgreSQL server
(``pg_server`` in tests/conftest.py); each test gets a fresh database, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import pg_database
from visage.gallery import Gallery

from .synthetic import CALIBRATION, MODEL


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL per test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gallery.db'}"
        return
    with pg_database(request.getfixturevalue("pg_server")) as url:
        yield url


@pytest.fixture
def gallery(db_url: str, tmp_path: Path) -> Iterator[Gallery]:
    """A Gallery on the test's store with a ``people`` collection of the synthetic model."""
    with Gallery(db_url, index_dir=tmp_path / "index", calibrations=[CALIBRATION],
                 actor="tester") as g:
        g.create_collection("people", model_id=MODEL)
        yield g
