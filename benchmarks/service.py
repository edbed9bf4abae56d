"""The HTTP service under sustained load: identify by embedding and by photo, 100k gallery.

    .venv/bin/python benchmarks/service.py [--size 100000] [--clients 16] [--duration 60]
        [--index exact] [--photos 40]

Builds a gallery of ``--size`` synthetic unit vectors (1000 consented persons, enrolled with
``Gallery.enroll_many``) in a temporary SQLite file, starts ``visage serve`` on it in its own
process (loopback, a free port, rate limit off), and drives it from this process with
``--clients`` concurrent HTTP clients for ``--duration`` seconds per scenario:

- *embedding*: ``POST /v1/collections/bench/identify`` with one JSON embedding, a noisy copy of
  a random gallery template (a genuine probe, distance ~0.3), k=5;
- *photo*: the same route with a raw JPEG from ``people/`` (every face is embedded and
  identified; the server runs one pipeline call at a time).

Each scenario runs first with one client (a quarter of ``--duration``: latency without
queueing), then with ``--clients`` (throughput; latency then includes waiting in line).

Every request carries a purpose and writes its audit event, as in production. Reported per
run: requests/s, client-side latency p50/p99, the server's own mean time per request (from its
``/metrics``: no client or transport, but with the wait for a request thread), and errors
(anything but a 200, or a transport error; must be 0). The baseline, measured first in this
process on the same store, is ``Gallery.identify`` called directly (no HTTP, one at a time):
one client's p50 over its p50 is what the service adds; many clients' requests/s over its
serial calls/s is how much of the gallery's own speed the service delivers. Client and server
share the machine's cores, so requests/s is a floor for a server with a machine of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from visage.api import pipeline as default_pipeline
from visage.decision import normalize
from visage.gallery import EmbeddingItem, Gallery
from visage.gallery.store import database_url, open_engine
from visage.server.keys_store import KeyStore

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


def build_gallery(db: Path, size: int, rng: np.random.Generator) -> Floats:
    """``size`` templates over ``PERSONS`` consented persons; returns the vectors."""
    vectors = unit(rng, size)
    model = default_pipeline().model_id
    start = time.perf_counter()
    with Gallery(database_url(db), index="exact", actor="benchmark") as g:
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


def baseline(db: Path, index: str, probes: Floats) -> list[float]:
    """``Gallery.identify`` in this process, one probe at a time: ms per call."""
    times = []
    with Gallery(database_url(db), index=index, actor="benchmark") as g:
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


def start_server(db: Path, index: str, log: Path) -> Server:
    """``visage serve`` on ``db`` in its own process; returns once it is ready."""
    port = free_port()
    env = {
        **os.environ,
        "VISAGE_DB": str(db),
        "VISAGE_PORT": str(port),
        "VISAGE_INDEX": index,
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
    deadline = time.monotonic() + 120
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
    raise SystemExit("server not ready after 120 s")


@dataclass(frozen=True)
class Probe:
    """One request's body: JSON embeddings, or a raw JPEG."""

    json: dict[str, object] | None = None
    photo: bytes | None = None


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str | None
    server_mean_ms: float = float("nan")


async def load(
    url: str, token: str, clients: int, duration: float, probe: Callable[[int], Probe]
) -> Result:
    """``clients`` concurrent loops sending ``probe(i)`` until ``duration`` has passed."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    counter = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors, first_error, counter
            while time.perf_counter() < stop:
                counter += 1
                start = time.perf_counter()
                try:
                    body = probe(counter)
                    response = await client.post(
                        "/v1/collections/bench/identify",
                        params=PARAMS,
                        json=body.json,
                        content=body.photo,
                        headers={"content-type": "image/jpeg"} if body.photo else None,
                    )
                    ok = response.status_code == 200
                    why = None if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                latencies.append((time.perf_counter() - start) * 1000)
                if not ok:
                    errors += 1
                    first_error = first_error or why

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - began
    return Result(len(latencies), errors, seconds, latencies, first_error)


def server_time(url: str) -> tuple[float, float]:
    """The identify route's server-side latency so far, from ``/metrics``: (seconds, requests)."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if 'route="/v1/collections/{collection}/identify"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("visage_http_request_duration_seconds_sum"):
            total += value
        elif line.startswith("visage_http_request_duration_seconds_count"):
            count += value
    return total, count


def run(
    url: str, token: str, clients: int, seconds: float, probe: Callable[[int], Probe]
) -> Result:
    """One load run, with the server's own mean time per request (it excludes the client)."""
    before = server_time(url)
    result = asyncio.run(load(url, token, clients, seconds, probe))
    after = server_time(url)
    served = after[1] - before[1]
    result.server_mean_ms = (after[0] - before[0]) / served * 1000 if served else float("nan")
    return result


def report(name: str, clients: int, result: Result) -> float:
    """Print one line for a run; returns its p50 in ms."""
    p50, p99 = pct(result.latencies_ms, 50), pct(result.latencies_ms, 99)
    print(
        f"{name:<10} {clients:3d} clients  {result.requests / result.seconds:7.1f} req/s   "
        f"p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   server mean {result.server_mean_ms:7.1f} ms   "
        f"requests {result.requests:6d}   errors {result.errors}",
        flush=True,
    )
    if result.first_error:
        print(f"  first error: {result.first_error}")
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--index", default="exact")
    parser.add_argument("--photos", type=int, default=40, help="people/ photos used as probes")
    parser.add_argument(
        "--faces", default=os.environ.get("VISAGE_FACES") or str(REPO.parent / "shared" / "faces")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    photos = [
        p.read_bytes() for p in sorted(Path(args.faces).glob("people/*/*.jpg"))[: args.photos]
    ]
    if not photos:
        raise SystemExit(f"no photos under {args.faces}/people: set VISAGE_FACES")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        vectors = build_gallery(db, args.size, rng)
        probes = genuine(rng, vectors, 4096)
        base = baseline(db, args.index, probes[:300])
        base_p50 = pct(base, 50)
        print(
            f"baseline   Gallery.identify in-process: p50 {base_p50:.2f} ms, "
            f"p99 {pct(base, 99):.2f} ms",
            flush=True,
        )
        token = (
            KeyStore(open_engine(database_url(db)))
            .create("benchmark", scopes=["identify"], collections=["bench"])
            .token
        )
        server = start_server(db, args.index, Path(tmp) / "server.log")
        try:

            def by_embedding(i: int) -> Probe:
                return Probe(json={"embeddings": [probes[i % len(probes)].tolist()]})

            def by_photo(i: int) -> Probe:
                return Probe(photo=photos[i % len(photos)])

            asyncio.run(load(server.url, token, 2, 3.0, by_embedding))  # warm-up
            print(
                f"\ngallery {args.size:,}, index {args.index}, {args.duration:.0f} s per run "
                f"(one client: {args.duration / 4:.0f} s), load average before: "
                f"{os.getloadavg()[0]:.1f}"
            )
            for name, probe in (("embedding", by_embedding), ("photo", by_photo)):
                alone = run(server.url, token, 1, args.duration / 4, probe)
                alone_p50 = report(name, 1, alone)
                loaded = run(server.url, token, args.clients, args.duration, probe)
                report(name, args.clients, loaded)
                if name == "embedding":
                    serial_share = loaded.requests / loaded.seconds * base_p50 / 1000
                    print(
                        f"  vs Gallery.identify in-process: one client's p50 is "
                        f"{alone_p50 / base_p50:.2f}x its p50; "
                        f"{args.clients} clients get {serial_share:.2f}x its serial throughput"
                    )
            print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        finally:
            server.process.terminate()
            server.process.wait(timeout=30)


if __name__ == "__main__":
    main()
