"""Whether a server finds what another server enrolled a moment before, and what an identify costs,
on a Milvus *standalone* server (``--index milvus:<uri>``).

    mkdir -p /tmp/mvs && /tmp/mvenv/bin/milvus-server --data /tmp/mvs --proxy-port 19600 &
    PYTHONPATH=src .venv/bin/python benchmarks/milvus_consistency.py \
        --uri http://127.0.0.1:19600 [--rounds 200] [--company 1000] [--queries 200] \
        [--erase-every 50] [--control 50]

(``/tmp/mvenv``: ``pip install milvus==2.3.5``, see docs/gallery.md.) Two processes, two
:class:`~visage.gallery.Gallery` objects on one SQLite store file and the one Milvus: each round,
process A adds a consented person and enrolls one template, then process B identifies that
template at once and must name that person (a miss is a wrong answer). Every ``--erase-every``
rounds A deletes the oldest round's person (a Milvus partition rewrite) and B must no longer
find it but still find a company member. Then B identifies ``--queries`` enrolled templates
with no write between them. Prints the misses and the p50/p99 of B's identify calls, right
after a write and steady; last a control on :class:`MilvusIndex` alone (``--control 0`` on code
without the version row's timestamp). It drops every ``visage_*`` collection on that Milvus
first (one Milvus serves one store): point it at a scratch server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from machine import cpu_line

from visage.decision import Calibration, normalize
from visage.gallery import EmbeddingItem, Gallery
from visage.gallery.milvus import MilvusIndex, milvus_client

MODEL = "synthetic-128"
CALIBRATION = Calibration(
    model_id=MODEL, threshold=0.6, method="fixed", source="benchmark: random unit vectors",
    created="2026-12-04", n_genuine=0, n_impostor=0,
)  # fmt: skip
COLLECTION = "consistency"
CONTROL_ID = 999_999  # the control's Milvus collection, beside the store's


def _vectors(n: int, seed: int) -> npt.NDArray[np.float32]:
    """``n`` random 128-d unit vectors (independent ones are ~1.41 apart)."""
    return normalize(np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32))


def _searcher(db: Path, index: str, conn: Connection) -> None:
    """Process B: identify each vector it is sent; answer the person found and the seconds."""
    with Gallery(db, index=index, calibrations=[CALIBRATION], actor="b") as gallery:
        while (vector := conn.recv()) is not None:
            start = time.perf_counter()
            best = gallery.identify(COLLECTION, vector).best
            conn.send((best.person_id if best else None, time.perf_counter() - start))


def _person(gallery: Gallery, name: str, vector: npt.NDArray[np.float32]) -> str:
    """Add a consented person with one template ``vector``; its id."""
    person = gallery.add_person(COLLECTION, name, external_id=name)
    gallery.grant_consent(COLLECTION, person.id, basis="consent", granted_by=name)
    gallery.enroll_many(COLLECTION, [EmbeddingItem(person.id, vector)])
    return person.id


def _ms(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(seconds)} calls)"


def _control(client: Any, uri: str, rounds: int) -> tuple[int, int]:
    """How often a search right after :meth:`MilvusIndex.add` misses the added vector at the
    version row's timestamp from before the add, and at the one recorded with it (which a
    reader uses): what the recorded timestamp buys over a stale one."""
    index = MilvusIndex(client, uri, CONTROL_ID, 128)
    vectors = _vectors(rounds + 1, seed=4)
    index.rebuild(np.arange(1), vectors[:1], 1, large=False)
    misses = {"stale": 0, "recorded": 0}
    for r in range(1, rounds + 1):
        index.version()
        before = index._read.ts if index._read else None
        index.add(np.asarray([r]), vectors[r : r + 1])
        index.set_version(r + 1)
        after = index._read.ts if index._read else None
        for ts, which in ((before, "stale"), (after, "recorded")):
            hits = client.search(
                index.name, data=[vectors[r]], limit=1, anns_field="v",
                consistency_level="Customized", guarantee_timestamp=ts,
            )  # fmt: skip
            misses[which] += not hits[0] or int(hits[0][0]["id"]) != r
    index.drop()
    return misses["stale"], misses["recorded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default="http://127.0.0.1:19600")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--company", type=int, default=1000, help="persons enrolled first")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--control", type=int, default=50, help="control adds (0: none)")
    parser.add_argument("--erase-every", type=int, default=50, help="rounds between erasures")
    args = parser.parse_args()
    client = milvus_client(args.uri)
    for name in client.list_collections():
        if name.startswith("visage_"):
            client.drop_collection(name)
    index = f"milvus:{args.uri}"
    company = _vectors(args.company, seed=1)
    fresh = _vectors(args.rounds, seed=2)
    with tempfile.TemporaryDirectory() as tmp, Gallery(
        Path(tmp) / "visage.db", index=index, calibrations=[CALIBRATION], actor="a"
    ) as gallery:
        gallery.create_collection(COLLECTION, model_id=MODEL)
        ids = []
        for i in range(args.company):
            person = gallery.add_person(COLLECTION, f"c{i}", external_id=f"c{i}")
            gallery.grant_consent(COLLECTION, person.id, basis="consent", granted_by="bench")
            ids.append(person.id)
        gallery.enroll_many(COLLECTION, [EmbeddingItem(p, v) for p, v in zip(ids, company)])
        ours, theirs = mp.get_context("spawn").Pipe()
        searcher = mp.get_context("spawn").Process(
            target=_searcher, args=(Path(tmp) / "visage.db", index, theirs)
        )
        searcher.start()
        ours.send(company[0])  # B's first identify connects and reads the schema: not timed
        misses = int(ours.recv()[0] != ids[0])
        erasures = 0
        after_write: list[float] = []
        steady: list[float] = []
        enrolled: list[tuple[str, int]] = []  # round persons not erased: id, vector's row
        for r in range(args.rounds):
            enrolled.append((_person(gallery, f"r{r}", fresh[r]), r))
            ours.send(fresh[r])
            found, seconds = ours.recv()
            misses += found != enrolled[-1][0]
            after_write.append(seconds)
            if args.erase_every and r % args.erase_every == args.erase_every - 1:
                victim, row = enrolled.pop(0)
                gallery.delete_person(COLLECTION, victim)  # the partition rewrite
                survivor = r % args.company
                for vector, expected in ((fresh[row], None), (company[survivor], ids[survivor])):
                    ours.send(vector)  # the erased one is gone, a survivor is still found
                    misses += ours.recv()[0] != expected
                erasures += 1
        rng = np.random.default_rng(3)
        for q in rng.integers(0, args.company, args.queries):
            ours.send(company[q])
            found, seconds = ours.recv()
            misses += found != ids[q]
            steady.append(seconds)
        ours.send(None)
        searcher.join(60)
    print(f"{args.rounds} rounds, {erasures} erasures, {args.queries} steady queries, "
          f"{args.company} company: {misses} misses")  # fmt: skip
    print(f"identify right after another process's enroll: {_ms(after_write)}")
    print(f"identify, no write between: {_ms(steady)}")
    if args.control:
        stale, recorded = _control(client, args.uri, args.control)
        print(f"control, {args.control} adds searched at once: missed at the previous version "
              f"row's timestamp {stale}, at the recorded one {recorded}")  # fmt: skip
    print(f"{cpu_line()}; loadavg {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
