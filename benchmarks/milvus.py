"""Milvus Lite vs faiss IVF as the gallery's index, measured in the same run on the same data.

    PYTHONPATH=src .venv/bin/python benchmarks/milvus.py [--sizes 1000000] [--queries 500]
        [--server http://127.0.0.1:19600 --server-data DIR --server-pid PID]

Clustered synthetic 128-d unit templates (seeded): ``size / 4`` identities with four noisy
templates each (~0.3 apart, as benchmarks/gallery.py's genuine probes), so neighbours cluster
as enrolled people do. Probes are fresh noisy copies of random identities' centres. recall@1:
the fraction of probes whose top-1 id is exact search's top-1 id. Latency: one query at a time,
as ``Gallery.identify`` asks, p50/p99 after a warm-up. Build: from the arrays to searchable.
RAM: this process's resident memory grown by the build (Milvus Lite runs in-process here);
disk: faiss's snapshot file, Milvus's data folder. Indexes: faiss ``AUTO_FAISS_SPEC`` (what
``auto`` builds from 50k templates) and Milvus IVF_FLAT nlist=1024 nprobe=32 (what
``milvus:<uri>`` builds from 50k), each also swept at nprobe 64 and 128.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_line

from gallery import DIM, GENUINE_NOISE, exact_top1, latencies, pct, unit
from visage.decision import normalize
from visage.gallery.index import FaissIndex, IndexSpec
from visage.gallery.index_cache import AUTO_FAISS_SPEC
from visage.gallery.milvus import MilvusIndex, milvus_client

Floats = np.ndarray


def rss_mb(pid: str = "self") -> float:
    """Resident memory of process ``pid`` (this one by default), MB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clustered(rng: np.random.Generator, size: int, chunk: int = 400_000) -> tuple[Floats, Floats]:
    """``size`` templates, four per identity, and the identities' centres, drawn ``chunk`` rows
    (a multiple of 4) at a time (the same draws as all at once; normalising 10M rows at once in float64 would
    take ~20 GB)."""
    centres = np.concatenate(
        [unit(rng, min(chunk, size // 4 - start)) for start in range(0, size // 4, chunk)]
    )
    templates = np.empty((size, DIM), np.float32)
    for start in range(0, size, chunk):
        rows = min(chunk, size - start)
        noise = GENUINE_NOISE * rng.standard_normal((rows, DIM)).astype(np.float32)
        near = np.repeat(centres[start // 4 : (start + rows) // 4], 4, axis=0)
        templates[start : start + rows] = normalize(near + noise)
    return templates, centres


def probes(rng: np.random.Generator, centres: Floats, n: int) -> Floats:
    picks = centres[rng.integers(0, len(centres), n)]
    return normalize(picks + GENUINE_NOISE * rng.standard_normal(picks.shape).astype(np.float32))


def report(label: str, build_s: float, ram: float, disk: float, times: list[float],
           recall: float) -> dict[str, float]:
    out = {"build_s": build_s, "p50": pct(times, 50), "p99": pct(times, 99), "recall": recall,
           "ram_mb": ram, "disk_mb": disk}
    print(f"  {label:44s} build {build_s:7.1f} s  p50 {out['p50']:6.2f} ms  p99 {out['p99']:6.2f}"
          f" ms  recall@1 {recall:.4f}  RAM +{ram:6.0f} MB  disk {disk:6.0f} MB", flush=True)
    return out


def bench(size: int, n_queries: int, seed: int, folder: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(seed)
    gallery, centres = clustered(rng, size)
    ids = np.arange(1, size + 1, dtype=np.int64)
    queries = probes(rng, centres, n_queries)
    truth = ids[exact_top1(gallery, queries)]
    print(f"{size:,} templates, {n_queries} probes", flush=True)

    spec = IndexSpec.parse(args.faiss)
    before = rss_mb()
    start = time.perf_counter()
    faiss_index = FaissIndex(DIM, spec.factory, spec.knobs)
    faiss_index.add(ids, gallery)
    faiss_build, faiss_ram = time.perf_counter() - start, rss_mb() - before
    faiss_index.save(folder / "faiss.npz")
    faiss_disk = (folder / "faiss.npz").stat().st_size / 2**20
    results = {}
    for nprobe in (32, 64, 128):
        faiss_index.set_knobs(f"nprobe={nprobe},k_factor_rf=8")
        times, top = latencies(lambda q: faiss_index.search(q[None, :], 1)[1][0, 0], queries)
        results[("faiss", nprobe)] = report(
            f"faiss {spec.factory} nprobe={nprobe}", faiss_build, faiss_ram, faiss_disk, times,
            float(np.mean(top == truth)),
        )  # fmt: skip

    if args.faiss_only:
        return
    uri = args.server or str(folder / "milvus.db")
    data, pid = (Path(args.server_data), args.server_pid) if args.server else (Path(uri), "self")
    label = "Milvus server" if args.server else "Milvus Lite"
    before = rss_mb(pid)
    start = time.perf_counter()
    milvus = MilvusIndex(milvus_client(uri), uri, 1, DIM)
    milvus.rebuild(ids, gallery, 1, large=True)
    milvus.search(queries[:1], 1)  # the first search loads the segments and builds their indexes
    milvus_build, milvus_ram = time.perf_counter() - start, rss_mb(pid) - before
    milvus_disk = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
    for nprobe in (32, 64, 128):
        milvus.set_nprobe(nprobe)
        times, top = latencies(lambda q: milvus.search(q[None, :], 1)[1][0, 0], queries)
        results[("milvus", nprobe)] = report(
            f"{label} IVF_FLAT nlist=1024 nprobe={nprobe}", milvus_build, milvus_ram,
            milvus_disk, times, float(np.mean(top == truth)),
        )  # fmt: skip
    milvus.drop()
    for nprobe in (32, 64, 128):
        m, f = results[("milvus", nprobe)], results[("faiss", nprobe)]
        print(f"  nprobe={nprobe}: Milvus/faiss build {m['build_s'] / f['build_s']:.2f}x, "
              f"p50 {m['p50'] / f['p50']:.2f}x, p99 {m['p99'] / f['p99']:.2f}x, "
              f"RAM {m['ram_mb'] / max(f['ram_mb'], 1):.2f}x, "
              f"disk {m['disk_mb'] / f['disk_mb']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faiss", default=AUTO_FAISS_SPEC, help="the faiss index to measure")
    parser.add_argument("--faiss-only", action="store_true",
                        help="measure faiss alone (10M: Milvus beside it would pass 24 GiB)")
    parser.add_argument("--server", help="a Milvus server's URI (default: Milvus Lite in-process)")
    parser.add_argument("--server-data", help="that server's data folder (for its disk use)")
    parser.add_argument("--server-pid", help="that server's process id (for its RAM)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="visage-milvus-bench-"))
        try:
            bench(size, args.queries, args.seed, folder, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
