""" "Probes are never stored": searched for everywhere an attacker with the store would look.

Every table's every value (binary and text) on SQLite and PostgreSQL, and on SQLite every file
of the store (the database, its ``-wal`` and ``-shm``, the index directory) while it is open.
The probe is looked for as float32 and float64 bytes and as text (its first components as JSON
or rounded to 4 decimals), and the search is first shown to find an enrolled template.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import MetaData, create_engine, select, text

from visage.gallery import Gallery

from .synthetic import consented_person, near, unit_vectors


def _patterns(vector: npt.NDArray[np.float32]) -> list[re.Pattern[bytes]]:
    """The forms a stored copy of ``vector`` could take: raw bytes, or its first three
    components written as text (full precision, or any rounding to 4+ decimals)."""
    raw = [re.escape(vector.astype(dt).tobytes()) for dt in ("<f4", "<f8", ">f4")]
    texts = []
    for digits in (None, 4):
        parts = []
        for x in vector[:3].astype(np.float64):
            text = repr(float(x)) if digits is None else f"{x:.{digits}f}".rstrip("0")
            parts.append(re.escape(text.encode()) + rb"\d*")
        texts.append(rb"\s*,\s*".join(parts))
    return [re.compile(p) for p in raw + texts]


def _store_values(db_url: str) -> list[bytes]:
    """Every value of every table of the store, as bytes (text encoded as UTF-8)."""
    engine = create_engine(db_url)
    meta = MetaData()
    meta.reflect(engine)
    values: list[bytes] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        values.append(bytes(value))
                    elif value is not None:
                        values.append(str(value).encode())
    engine.dispose()
    return values


def _store_files(db_url: str, index_dir: Path) -> list[Path]:
    if not db_url.startswith("sqlite"):
        return []
    db = Path(db_url.removeprefix("sqlite:///"))
    files = [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))]
    return [p for p in files if p.exists()] + sorted(p for p in index_dir.rglob("*") if p.is_file())


def traces(db_url: str, index_dir: Path, vector: npt.NDArray[np.float32]) -> list[str]:
    """Where ``vector`` can be found in the store: ``table value`` or file names."""
    patterns = _patterns(vector)
    found = [
        f"a value: {v[:60]!r}" for v in _store_values(db_url) if any(p.search(v) for p in patterns)
    ]
    for path in _store_files(db_url, index_dir):
        data = path.read_bytes()
        found += [f"{path.name}: {p.pattern[:40]!r}" for p in patterns if p.search(data)]
    return found


def test_probes_are_never_stored(gallery: Gallery, db_url: str, tmp_path: Path) -> None:
    vecs = unit_vectors(3, seed=31)
    ada = consented_person(gallery, "Ada")
    gallery.enroll("people", ada, vecs[0], purpose="onboarding")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        enrolled = np.frombuffer(
            conn.execute(text("SELECT embedding FROM template")).scalar_one(), "<f4"
        )
    engine.dispose()
    # Positive control: the search finds what the store does hold (the template as written).
    assert traces(db_url, tmp_path / "index", enrolled)
    probe = near(vecs[0], 0.02, seed=32)
    stranger = vecs[2]
    gallery.identify("people", probe, purpose="door", k=3)
    gallery.identify("people", stranger, purpose="door")
    gallery.verify("people", ada, probe, purpose="login")
    gallery.find_similar("people", probe, k=1, purpose="review")
    gallery.save_indexes()
    for vector in (probe, stranger):
        assert traces(db_url, tmp_path / "index", vector) == []
    assert gallery.verify_audit().ok
