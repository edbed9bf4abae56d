"""Vector indexes: exact and faiss agree, removal is final, snapshots round-trip, and ``auto``
switches from exact to IVF at 50,000 templates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visage.decision import distances
from visage.gallery import EmbeddingItem, Gallery
from visage.gallery.index import IndexSpec, load_index, make_index
from visage.gallery.index_cache import (
    AUTO_FAISS_AT,
    AUTO_FAISS_LARGE_AT,
    AUTO_FAISS_LARGE_SPEC,
    AUTO_FAISS_SPEC,
    auto_spec,
)

from .synthetic import CALIBRATION, MODEL, consented_person, near, unit_vectors

SPECS = [
    "exact",
    "faiss:Flat",
    "faiss:HNSW16,Flat;efSearch=64",
    "faiss:IVF8,Flat;nprobe=8",
    "faiss:IVF8,PQ16np,RFlat;nprobe=8,k_factor_rf=8",
]


@pytest.mark.parametrize("spec", SPECS)
def test_search_remove_save_load(spec: str, tmp_path: Path) -> None:
    vectors = unit_vectors(2000, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    index = make_index(spec, 128)
    index.add(ids, vectors)
    assert index.count() == 2000 and index.spec == spec
    probes = np.stack([near(v, 0.02, seed=i) for i, v in enumerate(vectors[:50])])
    dist, found = index.search(probes, 3)
    assert (found[:, 0] == ids[:50]).all()
    expected = [float(distances(p, vectors[i : i + 1])[0]) for i, p in enumerate(probes)]
    np.testing.assert_allclose(dist[:, 0], expected, atol=1e-4)

    assert index.remove(ids[:10]) == 10 and index.remove(ids[:10]) == 0
    _, found = index.search(probes, 3)
    assert not np.isin(found, ids[:10]).any()
    assert (found[10:, 0] == ids[10:50]).all()

    index.remove(ids[10:900])  # past the compaction point for faiss
    _, found = index.search(probes, 5)
    assert not np.isin(found, ids[:900]).any() and index.count() == 1100

    index.save(tmp_path / "snap.npz")
    loaded = load_index(tmp_path / "snap.npz")
    assert loaded.spec == spec and loaded.count() == 1100
    assert (loaded.ids() == ids[900:]).all()
    more = np.stack([near(v, 0.02, seed=i) for i, v in enumerate(vectors[900:950])])
    assert (loaded.search(more, 1)[1][:, 0] == ids[900:950]).all()
    snapshot = (tmp_path / "snap.npz").read_bytes()
    assert not any(v.tobytes() in snapshot for v in vectors[:900:50])  # removed means erased
    assert vectors[950].tobytes() in snapshot or not spec.startswith(("exact", "faiss:Flat"))


@pytest.mark.parametrize("spec", ["exact", "faiss:HNSW16,Flat"])
def test_small_and_empty_indexes_pad_results(spec: str) -> None:
    index = make_index(spec, 128)
    dist, found = index.search(unit_vectors(1, seed=2), 4)
    assert (found == -1).all() and np.isinf(dist).all()
    index.add(np.array([5, 6]), unit_vectors(2, seed=3))
    dist, found = index.search(unit_vectors(1, seed=4), 4)
    assert sorted(found[0, :2].tolist()) == [5, 6] and (found[0, 2:] == -1).all()
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.array([5]), unit_vectors(1, seed=5))


def test_hnsw_recall_matches_exact_on_noisy_probes() -> None:
    vectors = unit_vectors(5000, seed=6)
    ids = np.arange(5000, dtype=np.int64)
    exact, hnsw = make_index("exact", 128), make_index("faiss:HNSW32,Flat;efSearch=64", 128)
    exact.add(ids, vectors)
    hnsw.add(ids, vectors)
    probes = np.stack([near(vectors[i], 0.03, seed=i) for i in range(0, 5000, 25)])
    agree = (exact.search(probes, 1)[1][:, 0] == hnsw.search(probes, 1)[1][:, 0]).mean()
    assert agree >= 0.99


@pytest.mark.parametrize(
    "bad", ["annoy", "faiss:", "faiss:NotAnIndex", "faiss:HNSW32,Flat;efSearch=oops"]
)
def test_bad_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        make_index(bad, 128)


def test_spec_round_trips_through_text() -> None:
    spec = IndexSpec.parse("faiss:IVF64,PQ16,RFlat;nprobe=8")
    assert (spec.kind, spec.factory, spec.knobs) == ("faiss", "IVF64,PQ16,RFlat", "nprobe=8")
    assert str(spec) == "faiss:IVF64,PQ16,RFlat;nprobe=8"


@pytest.mark.parametrize("spec", SPECS)
def test_removed_vectors_are_erased_before_compaction(spec: str, tmp_path: Path) -> None:
    vectors = unit_vectors(1000, seed=7)
    index = make_index(spec, 128)
    index.add(np.arange(1000, dtype=np.int64), vectors)
    index.remove(np.arange(10, dtype=np.int64))  # far below the compaction point
    index.save(tmp_path / "snap.npz")
    snapshot = (tmp_path / "snap.npz").read_bytes()
    assert not any(v.tobytes() in snapshot for v in vectors[:10])
    assert load_index(tmp_path / "snap.npz").count() == 990


def test_auto_is_exact_below_50000_templates_and_ivf_from_there(tmp_path: Path) -> None:
    """``index="auto"`` (the default) picks by the collection's size when an index is built: at
    49,999 templates the exact index, at 50,000 :data:`AUTO_FAISS_SPEC`, which still finds a
    noisy copy's person. (Within a process a loaded index grows in place; the next process to
    build one switches.)"""
    db = tmp_path / "g.db"
    vectors = unit_vectors(AUTO_FAISS_AT, seed=3)
    with Gallery(db, index="auto", calibrations=[CALIBRATION]) as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(100)]
        items = [EmbeddingItem(ids[i % 100], v) for i, v in enumerate(vectors)]
        g.enroll_many("people", items[:-1], batch_size=5000)
    with Gallery(db, index="auto", calibrations=[CALIBRATION]) as g:
        below = g.index("people")
        assert (below.spec, below.count()) == ("exact", AUTO_FAISS_AT - 1)
        g.enroll_many("people", items[-1:])
    with Gallery(db, index="auto", calibrations=[CALIBRATION]) as g:
        at = g.index("people")
        assert (at.spec, at.count()) == (AUTO_FAISS_SPEC, AUTO_FAISS_AT)
        found = g.identify("people", near(vectors[7], 0.02, seed=1), k=1)
        assert found.best is not None and found.best.external_id == "p7"


def test_auto_scans_more_lists_from_four_million_templates() -> None:
    """Past :data:`AUTO_FAISS_LARGE_AT` ``auto`` trains 4,096 lists and probes 64 of them (10M
    templates: p99 3.1 ms at recall@1 0.996, where 1,024 lists took 23 ms); below, 1,024 lists,
    whose training costs a fifth as long (docs/gallery.md)."""
    assert auto_spec(AUTO_FAISS_AT - 1) == "exact"
    assert auto_spec(AUTO_FAISS_AT) == auto_spec(AUTO_FAISS_LARGE_AT - 1) == AUTO_FAISS_SPEC
    assert auto_spec(AUTO_FAISS_LARGE_AT) == auto_spec(50_000_000) == AUTO_FAISS_LARGE_SPEC
    spec = IndexSpec.parse(AUTO_FAISS_LARGE_SPEC)
    assert (spec.kind, spec.factory, spec.knobs) == (
        "faiss", "IVF4096,PQ32np,RFlat", "nprobe=64,k_factor_rf=8"
    )
    large = make_index(AUTO_FAISS_LARGE_SPEC, 128)
    assert large.spec == AUTO_FAISS_LARGE_SPEC and large.count() == 0
