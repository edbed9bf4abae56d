"""Gallery scale: enroll throughput into the store, and 1:N search latency and recall, exact vs faiss.

    .venv/bin/python benchmarks/gallery.py [--sizes 10000,100000,1000000] [--queries 1000]
        [--index 'HNSW32,Flat;efSearch=64|efSearch=128'] [--store 100000] [--db URL]

Synthetic 128-d unit vectors (seeded). Each gallery template is an independent random
direction: the hardest case for an approximate index, since real identities cluster. Two probe
kinds: *genuine* probes are noisy copies of random gallery templates at distance ~0.3 (a
same-person pair under the shipped threshold of ~0.38); *stranger* probes are fresh random
vectors. Recall@1 is the fraction of probes whose top-1 id equals exact search's top-1 id.
Latency is one query at a time, as ``Gallery.identify`` asks, p50/p99 over ``--queries``
probes after a warm-up; build time is reported beside it. Every faiss factory is built once per
size and its knob sets (``|``-separated) are swept. Exact search's latency uses ``ExactIndex``,
the gallery's default below 50k templates.

The store part enrolls ``--store`` templates with ``Gallery.enroll_many`` (batches of 1000;
templates and audit events in one transaction per batch) into a fresh SQLite file (or ``--db``),
then times ``Gallery.identify`` end to end (index search, candidate re-scoring from the store,
consent filter, audit event).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from visage.decision import Calibration, normalize
from visage.gallery import EmbeddingItem, FaissIndex, Gallery
from visage.gallery.index import ExactIndex, IndexSpec

DIM = 128
GENUINE_NOISE = 0.3 / np.sqrt(DIM)  # per-dimension noise giving a distance of ~0.3
DEFAULT_INDEXES = [
    "HNSW32,Flat;efSearch=32|efSearch=64|efSearch=128|efSearch=256",
    "IVF1024,PQ32np,RFlat;nprobe=16,k_factor_rf=8|nprobe=64,k_factor_rf=8",
]
Floats = npt.NDArray[np.float32]


def unit(rng: np.random.Generator, n: int) -> Floats:
    return normalize(rng.standard_normal((n, DIM)).astype(np.float32))


def genuine(rng: np.random.Generator, gallery: Floats, n: int) -> Floats:
    picks = gallery[rng.integers(0, len(gallery), n)]
    noisy = picks + GENUINE_NOISE * rng.standard_normal(picks.shape).astype(np.float32)
    return normalize(noisy)


def exact_top1(gallery: Floats, queries: Floats, chunk: int = 100_000) -> npt.NDArray[np.int64]:
    """Ground truth by blocked matrix products (max cosine = min distance)."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for start in range(0, len(gallery), chunk):
        sims = queries @ gallery[start : start + chunk].T
        local = sims.argmax(axis=1)
        value = sims[np.arange(len(queries)), local]
        better = value > best
        best[better], arg[better] = value[better], local[better] + start
    return arg


def latencies(search: Callable[[Floats], np.int64], queries: Floats) -> tuple[list[float], npt.NDArray[np.int64]]:
    for q in queries[:20]:
        search(q)
    times, top = [], []
    for q in queries:
        start = time.perf_counter()
        top.append(search(q))
        times.append((time.perf_counter() - start) * 1000)
    return times, np.array(top, np.int64)


def top1(index: ExactIndex | FaissIndex) -> Callable[[Floats], np.int64]:
    """One-query search returning the nearest id, the way identify asks."""
    return lambda q: np.int64(index.search(q[None, :], 1)[1][0, 0])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def row(label: str, size: int, build_s: float, times: list[float], recall: dict[str, float]) -> dict[str, object]:
    out = {"index": label, "size": size, "build_s": build_s, "p50_ms": pct(times, 50),
           "p99_ms": pct(times, 99), **recall}
    print(f"  {label:58s} build {build_s:7.1f}s  p50 {out['p50_ms']:7.3f} ms  "
          f"p99 {out['p99_ms']:7.3f} ms  recall@1 genuine {recall['genuine']:.4f}  "
          f"stranger {recall['stranger']:.4f}", flush=True)
    return out


def bench_size(size: int, n_queries: int, indexes: list[str], exact_queries: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    gallery = unit(rng, size)
    ids = np.arange(size, dtype=np.int64)
    probes = {"genuine": genuine(rng, gallery, n_queries), "stranger": unit(rng, n_queries)}
    truth = {kind: exact_top1(gallery, q) for kind, q in probes.items()}
    print(f"\n{size:,} templates, {n_queries} genuine + {n_queries} stranger probes", flush=True)
    rows = []

    start = time.perf_counter()
    exact = ExactIndex.from_arrays(ids, gallery)
    build = time.perf_counter() - start
    times, top = latencies(top1(exact), probes["genuine"][:exact_queries])
    recall = {"genuine": float((top == truth["genuine"][:exact_queries]).mean()), "stranger": 1.0}
    rows.append(row("exact (numpy)", size, build, times, recall))

    for text in indexes:
        factory, _, knob_sets = text.partition(";")
        start = time.perf_counter()
        index = FaissIndex(DIM, factory)
        index.add(ids, gallery)
        build = time.perf_counter() - start
        for knobs in knob_sets.split("|") if knob_sets else [""]:
            index.set_knobs(knobs)
            recall, all_times = {}, []
            for kind, queries in probes.items():
                times, top = latencies(top1(index), queries)
                recall[kind] = float((top == truth[kind]).mean())
                if kind == "genuine":
                    all_times = times
            rows.append(row(str(IndexSpec("faiss", factory, knobs)), size, build, all_times, recall))
    exact_p99 = rows[0]["p99_ms"]
    for r in rows[1:]:
        print(f"  speed-up of p99 vs exact: {float(exact_p99) / float(r['p99_ms']):6.1f}x  {r['index']}")  # type: ignore[arg-type]
    return rows


def bench_store(n: int, db: str | None, index: str, n_queries: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    cal = Calibration("synthetic-128", 0.38, "fixed", "benchmark", "2026-11-29", 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        url = db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        with Gallery(url, index=index, index_dir=Path(tmp) / "index", calibrations=[cal],
                     actor="benchmark") as g:
            g.create_collection("bench", model_id="synthetic-128")
            persons = []
            for i in range(1000):
                p = g.add_person("bench", f"P{i}")
                g.grant_consent("bench", p.id, basis="consent", granted_by="benchmark")
                persons.append(p.id)
            items = [EmbeddingItem(persons[i % len(persons)], v) for i, v in enumerate(vectors)]
            start = time.perf_counter()
            g.enroll_many("bench", items, batch_size=1000)
            elapsed = time.perf_counter() - start
            print(f"\nstore ({url.split(':')[0]}): enrolled {n:,} templates in {elapsed:.1f}s = "
                  f"{n / elapsed:,.0f} templates/s (with one audit event each)", flush=True)
            start = time.perf_counter()
            g.index("bench")
            print(f"  index ready ({g.index('bench').spec}) in {time.perf_counter() - start:.1f}s")
            probes = genuine(rng, vectors, n_queries)
            times, _ = latencies(lambda q: np.int64(len(g.identify("bench", q, k=5).candidates)), probes)
            print(f"  Gallery.identify end to end, k=5: p50 {pct(times, 50):.2f} ms, "
                  f"p99 {pct(times, 99):.2f} ms ({statistics.mean(times):.2f} ms mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200,
                        help="probes timed on exact search (slow at 1M)")
    parser.add_argument("--index", action="append", help="FACTORY;KNOBS|KNOBS (repeatable)")
    parser.add_argument("--store", type=int, default=100_000, help="templates to enroll (0: skip)")
    parser.add_argument("--store-index", default="auto")
    parser.add_argument("--db", default=None, help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",") if s):
        bench_size(size, args.queries, args.index or DEFAULT_INDEXES, args.exact_queries, args.seed)
    if args.store:
        bench_store(args.store, args.db, args.store_index, min(args.queries, 500), args.seed)


if __name__ == "__main__":
    main()
