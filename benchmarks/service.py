"""The HTTP service under sustained load, driven by ``wrk``: identify by embedding and by photo.

    .venv/bin/python benchmarks/service.py [--size 100000] [--connections 1,16,64]
        [--duration 60] [--index exact,auto] [--workers 2] [--photos 40] [--db URL]
        [--detector hog|blazeface|blazeface-short]

Builds a gallery of ``--size`` synthetic unit vectors (1000 consented persons, enrolled with
``Gallery.enroll_many``) in a temporary SQLite file (or the empty database ``--db`` names), starts ``visage serve --workers N`` on it
(loopback, a free port, rate limit off) and loads it with ``wrk`` (Debian's package, installed
with apt-get when missing; one thread per core, ``benchmarks/wrk_identify.lua`` sends the
bodies) for ``--duration`` seconds per run:

- *embedding*: ``POST /v1/collections/bench/identify`` with one JSON embedding, a noisy copy of
  a random gallery template (a genuine probe, distance ~0.3), k=5;
- *photo*: the same route with a raw JPEG from ``people/`` (every face embedded and identified).

Every request carries a purpose and its audit event is committed before the answer, as in
production. Reported per run: requests/s, latency p50/p99/p99.9 (wrk's), errors (non-2xx,
timeouts at 10 s, socket errors; must be 0), and the CPU seconds the server's processes and
the client used. The baseline, measured first in this process on the same store, is
``Gallery.identify`` called directly, one at a time. Client and server share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
from machine import cpu_line, default_faces

from visage.api import pipeline as default_pipeline
from visage.decision import normalize
from visage.gallery import EmbeddingItem, Gallery
from visage.server.keys_store import KeyStore
from visage.store import Store, database_url

REPO = Path(__file__).resolve().parents[1]

DIM = 128
PERSONS = 1000
GENUINE_NOISE = 0.3 / np.sqrt(DIM)
PARAMS: dict[str, str | int] = {"purpose": "benchmark", "k": 5}
Floats = npt.NDArray[np.float32]


def unit(rng: np.random.Generator, n: int) -> Floats:
    """``n`` random unit vectors: independent identities, ~1.41 apart."""
    return normalize(rng.standard_normal((n, DIM)))


def genuine(rng: np.random.Generator, gallery: Floats, n: int) -> Floats:
    """Noisy copies of random gallery vectors, ~0.3 away: the same person as the original."""
    picks = gallery[rng.integers(0, len(gallery), n)]
    return normalize(picks + GENUINE_NOISE * rng.standard_normal(picks.shape))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def build_gallery(db: str, size: int, rng: np.random.Generator) -> Floats:
    """``size`` templates over ``PERSONS`` consented persons; returns the vectors."""
    vectors = unit(rng, size)
    model = default_pipeline().model_id
    start = time.perf_counter()
    with Gallery(db, index="exact", actor="benchmark") as g:
        g.create_collection("bench", model_id=model)
        persons = []
        for i in range(PERSONS):
            person = g.add_person("bench", f"P{i}")
            g.grant_consent("bench", person.id, basis="consent", granted_by="benchmark")
            persons.append(person.id)
        items = [EmbeddingItem(persons[i % PERSONS], v) for i, v in enumerate(vectors)]
        g.enroll_many("bench", items, batch_size=1000)
        g.index("bench")  # saved as a snapshot on close, so the server loads it at once
    print(
        f"gallery: {size:,} templates, {PERSONS} persons, built in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return vectors


def baseline(db: str, index: str, probes: Floats) -> list[float]:
    """``Gallery.identify`` in this process, one probe at a time: ms per call."""
    times = []
    with Gallery(db, index=index, actor="benchmark") as g:
        g.identify("bench", probes[0], k=5, purpose="warm-up")
        for probe in probes:
            start = time.perf_counter()
            g.identify("bench", probe, k=5, purpose="benchmark")
            times.append((time.perf_counter() - start) * 1000)
    return times


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db: str, index: str, workers: int, log: Path, detector: str = "hog") -> Server:
    """``visage serve --workers N`` on ``db`` in its own process; returns once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "VISAGE_DB": db,
        "VISAGE_PORT": str(port),
        "VISAGE_INDEX": index,
        "VISAGE_WORKERS": str(workers),
        "VISAGE_DETECTOR": detector,
        "VISAGE_RATE_LIMIT": "0",
        "VISAGE_LOG_LEVEL": "warning",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "visage", "serve", "--no-bootstrap-key"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, process)
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("server not ready after 180 s")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def wrk_binary() -> str:
    """``wrk``, installed from Debian's package when missing."""
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed and apt-get could not install it")
    return found


@dataclass(frozen=True)
class Run:
    scenario: str
    connections: int
    rps: float
    p50: float
    p99: float
    p999: float
    errors: int
    server_cpu: float
    client_cpu: float

    def line(self) -> str:
        return (f"| {self.scenario} | {self.connections} | {self.rps:.1f} | {self.p50:.1f} | "
                f"{self.p99:.1f} | {self.p999:.1f} | {self.errors} | {self.server_cpu:.0f} s | "
                f"{self.client_cpu:.0f} s |")  # fmt: skip


def load(server: Server, token: str, bodies: Path, kind: str, connections: int, seconds: float,
         scenario: str) -> Run:  # fmt: skip
    """One wrk run against the identify route; CPU of the server's processes and of wrk."""
    threads = max(1, min(connections, os.cpu_count() or 1))
    url = f"{server.url}/v1/collections/bench/identify?purpose=benchmark&k=5"
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s",
               "--timeout", "10s", "-H", f"Authorization: Bearer {token}",
               "-s", str(Path(__file__).with_name("wrk_identify.lua")), url, "--", str(bodies),
               kind]  # fmt: skip
    server_before = process_tree_cpu(server.process.pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = process_tree_cpu(server.process.pid) - server_before
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    client_cpu = (client_after.ru_utime + client_after.ru_stime
                  - client_before.ru_utime - client_before.ru_stime)  # fmt: skip
    return Run(scenario, connections, stats["requests"] / stats["seconds"], stats["p50"],
               stats["p99"], stats["p999"], errors, server_cpu, client_cpu)  # fmt: skip


def warm_up(server: Server, token: str, bodies: Path, budget_s: float = 300) -> None:
    """Load the server until a 3 s run answers every request within a second: every worker
    has then loaded (or, on a store with no snapshot folder such as PostgreSQL, built) its
    index, which the first runs measured otherwise (a 100k IVF build is ~20 s a worker)."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        run = load(server, token, bodies, "application/json", 4, 3, "warm-up")
        if run.rps > 0 and run.p999 < 1000 and run.errors == 0:
            return
    raise SystemExit(f"the server was not warm after {budget_s:.0f} s")


def write_bodies(folder: Path, name: str, payloads: list[bytes]) -> Path:
    """One file per body and a list of them, for the wrk script."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, payload in enumerate(payloads):
        path = folder / f"{name}-{i}"
        path.write_bytes(payload)
        paths.append(str(path))
    listing = folder / f"{name}.list"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--photo-connections", default="16")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--index", default="exact,auto", help="comma-separated index settings")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--photos", type=int, default=40, help="people/ photos used as probes")
    parser.add_argument(
        "--faces", default=default_faces()
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="an empty database URL (default: a temporary SQLite file)")
    parser.add_argument("--detector", default="hog", help="the server's detector for photos")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    photos = [
        p.read_bytes() for p in sorted(Path(args.faces).glob("people/*/*.jpg"))[: args.photos]
    ]
    if not photos:
        raise SystemExit(f"no photos under {args.faces}/people: set VISAGE_FACES")
    print(f"{cpu_line()}; wrk {wrk_binary()}")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or database_url(Path(tmp) / "bench.db")
        vectors = build_gallery(db, args.size, rng)
        probes = genuine(rng, vectors, 2000)
        embedding_list = write_bodies(
            Path(tmp) / "bodies", "embedding",
            [json.dumps({"embeddings": [p.tolist()]}).encode() for p in probes],
        )  # fmt: skip
        photo_list = write_bodies(Path(tmp) / "bodies", "photo", photos)
        token = (
            KeyStore(Store.open(db))
            .create("benchmark", scopes=["identify"], collections=["bench"])
            .token
        )
        for index in args.index.split(","):
            base = baseline(db, index, probes[:300])
            print(f"\nindex {index}: baseline Gallery.identify in-process, one at a time: "
                  f"p50 {pct(base, 50):.2f} ms, p99 {pct(base, 99):.2f} ms = "
                  f"{1000 / pct(base, 50):.0f} calls/s", flush=True)  # fmt: skip
            server = start_server(db, index, args.workers, Path(tmp) / "server.log", args.detector)
            try:
                warm_up(server, token, embedding_list)
                print(f"workers {args.workers}, detector {args.detector}, {args.duration:.0f} s "
                      f"per run, load average before {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
                print(
                    "| probe | connections | req/s | p50 ms | p99 ms | p99.9 ms | errors | "
                    "server CPU | client CPU |\n|---|---|---|---|---|---|---|---|---|"
                )
                runs = [("embedding", embedding_list, "application/json", c)
                        for c in args.connections.split(",")]  # fmt: skip
                runs += [("photo", photo_list, "image/jpeg", c)
                         for c in args.photo_connections.split(",")]  # fmt: skip
                for scenario, bodies, kind, conns in runs:
                    run = load(server, token, bodies, kind, int(conns), args.duration, scenario)
                    print(run.line(), flush=True)
                print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
            finally:
                server.process.terminate()
                server.process.wait(timeout=60)


if __name__ == "__main__":
    main()
