"""Bulk reads and writes beside live searches: an edge snapshot, an export and an import.

    .venv/bin/python benchmarks/transfer.py [--persons 20000] [--import-persons 200000]
        [--db postgresql+psycopg://user@host:port/db] [--probes 300]

Builds a ``--persons`` collection (one consented person, one template each) by importing a
synthetic export, then measures (issue 18, item 1):

- *snapshot*: ``EdgeHub.snapshot`` of the collection (read in one read-only snapshot, signed),
  and ``Gallery.export_collection`` to a file: seconds each;
- *identify during a snapshot*: identify latency p50/p99 measured in this process, idle and
  while another process takes snapshots back to back (the ratio is the figure: target ≤ 2);
- *import*: ``visage import`` of an ``--import-persons`` file in a child process: seconds, peak
  RSS (``wait4``), and identify p99 in this process while it runs; the baseline is the same
  command on a 1-person file (the interpreter and the libraries alone).

On SQLite (a temporary file) unless ``--db`` names an empty database. Prints the CPU flags.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gallery"))

from synthetic import peak_kib, unit_vectors, visage_peak_command, visage_peak_kib, write_export

from visage.edge.events import DeviceInfo
from visage.gallery import Gallery
from visage.server.hub import EdgeHub
from visage.signing import generate_signing_key

SNAPSHOTS = """
import sys
from pathlib import Path
from visage.edge.events import DeviceInfo
from visage.server.hub import EdgeHub
from visage.gallery import Gallery
from visage.signing import generate_signing_key
with Gallery(sys.argv[1]) as g:
    hub = EdgeHub(g, generate_signing_key())
    Path(sys.argv[2]).touch()
    while Path(sys.argv[2]).exists():
        hub.snapshot(key_id="bench", collection="imported", device=DeviceInfo("bench-1", "0"))
"""


def latencies(g: Gallery, probes: np.ndarray, *, until: float | None = None) -> list[float]:
    """Seconds per ``identify`` of each probe (cycling until ``until`` when given)."""
    times: list[float] = []
    i = 0
    while (until is None and i < len(probes)) or (until is not None and time.monotonic() < until):
        started = time.perf_counter()
        g.identify("imported", probes[i % len(probes)], purpose="benchmark")
        times.append(time.perf_counter() - started)
        i += 1
    return times


def pct(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000, q))


def child_import(path: Path, db: str, name: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of ``visage import`` in a child process."""
    started = time.monotonic()
    status, kib = visage_peak_kib("import", str(path), "--db", db, "--collection", name, "--json")
    if status:
        raise SystemExit(f"visage import failed ({status})")
    return time.monotonic() - started, kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--import-persons", type=int, default=200_000)
    parser.add_argument("--db", help="an empty database URL (default: a temporary SQLite file)")
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = args.db or f"sqlite:///{folder / 'bench.db'}"
        print(f"store: {db.split('://')[0]}; {args.persons} persons")
        export = write_export(folder / "gallery.jsonl", args.persons)
        seconds, rss = child_import(export, db, "imported")
        print(f"import {args.persons} persons: {seconds:.1f} s, peak RSS {rss:.0f} MB")
        probes = unit_vectors(args.probes, seed=7)
        with Gallery(db) as g:
            hub = EdgeHub(g, generate_signing_key())
            started = time.monotonic()
            document = hub.snapshot(
                key_id="bench", collection="imported", device=DeviceInfo("bench-0", "0")
            )
            snap_s = time.monotonic() - started
            started = time.monotonic()
            g.export_collection("imported", folder / "out.jsonl")
            export_s = time.monotonic() - started
            print(f"snapshot: {snap_s:.2f} s ({len(document) / 1e6:.1f} MB); "
                  f"export: {export_s:.2f} s")  # fmt: skip
            latencies(g, probes[:20])  # warm the index
            idle = latencies(g, probes)
            print(f"identify idle: p50 {pct(idle, 50):.1f} ms, p99 {pct(idle, 99):.1f} ms")
            flag = folder / "snapshots-running"
            child = subprocess.Popen([sys.executable, "-c", SNAPSHOTS, db, str(flag)])
            while not flag.exists() and child.poll() is None:
                time.sleep(0.05)
            busy = latencies(g, probes, until=time.monotonic() + max(3 * snap_s, 10))
            flag.unlink()
            child.wait()
            print(f"identify during snapshots: p50 {pct(busy, 50):.1f} ms, "
                  f"p99 {pct(busy, 99):.1f} ms = {pct(busy, 99) / pct(idle, 99):.2f}x idle p99 "
                  f"({len(busy)} calls)")  # fmt: skip
            small = write_export(folder / "one.jsonl", 1, seed=3)
            _, base_rss = child_import(small, db, "one")
            big = write_export(folder / "big.jsonl", args.import_persons, seed=4)
            command = visage_peak_command(
                "import", str(big), "--db", db, "--collection", "big", "--json"
            )
            child = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            started = time.monotonic()
            during: list[float] = []
            while child.poll() is None:
                during += latencies(g, probes[:10])
            import_s = time.monotonic() - started
            peak = peak_kib(child.communicate()[1]) / 1024
            print(f"import {args.import_persons} persons ({big.stat().st_size / 1e6:.0f} MB): "
                  f"{import_s:.1f} s; peak RSS {peak:.0f} MB (1-person file: {base_rss:.0f} MB); "
                  f"identify meanwhile p99 {pct(during, 99):.1f} ms = "
                  f"{pct(during, 99) / pct(idle, 99):.2f}x idle ({len(during)} calls)")  # fmt: skip


if __name__ == "__main__":
    main()
