"""Run by test_concurrency.py, two at a time: searches, enrollments and deletions in threads.

``concurrency_worker.py URL INDEX_DIR PART``: three threads identify random known faces while one
enrolls the new persons ``N{PART}-{i}`` and one deletes this part's share of ``P*``; one JSON
line per finished operation on stdout, with ``time.monotonic()`` (one clock for every process on
the machine) at its start and end.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
from synthetic import CALIBRATION, consented_person, near, unit_vectors  # type: ignore[import-not-found]

from visage.gallery import Gallery

PERSONS, NEW, DELETED = 40, 12, 12
"""Persons enrolled before; new ones per part; deleted ones per part (P0.. for part 0, P20..)."""


def known(name: str) -> np.ndarray:
    """The template of ``name`` (``P{i}`` or ``N{part}-{i}``): the same in every process."""
    if name.startswith("P"):
        return unit_vectors(PERSONS, seed=1)[int(name[1:])]
    part, i = name[1:].split("-")
    return unit_vectors(1, seed=1000 + 100 * int(part) + int(i))[0]


def main(url: str, index_dir: str, part: int) -> None:
    gallery = Gallery(url, index_dir=index_dir, calibrations=[CALIBRATION], actor=f"part-{part}")
    out = threading.Lock()
    writers_done = threading.Event()
    names = [f"P{i}" for i in range(PERSONS)] + [f"N{p}-{i}" for p in (0, 1) for i in range(NEW)]

    def emit(record: dict[str, object]) -> None:
        with out:
            print(json.dumps(record), flush=True)

    def search(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not writers_done.is_set():
            name = names[int(rng.integers(len(names)))]
            start = time.monotonic()
            answer = gallery.identify("people", near(known(name), 0.02, seed=int(rng.integers(1 << 30))),
                                      purpose="concurrency test")  # fmt: skip
            best = answer.best
            emit({"op": "identify", "name": name, "start": start, "end": time.monotonic(),
                  "seq": answer.audit_seq, "best": best.external_id if best else None,
                  "person": best.person_id if best else None})  # fmt: skip

    def enroll() -> None:
        for i in range(NEW):
            name = f"N{part}-{i}"
            person = consented_person(gallery, name)
            gallery.enroll("people", person, known(name))
            emit({"op": "enroll", "name": name.lower(), "end": time.monotonic()})
            time.sleep(0.05)

    def delete() -> None:
        first = part * PERSONS // 2
        ids = {p.external_id: p.id for p in gallery.persons("people", limit=1000)}
        for i in range(first, first + DELETED):
            gallery.delete_person("people", ids[f"p{i}"])
            emit({"op": "delete", "name": f"p{i}", "end": time.monotonic()})
            time.sleep(0.05)

    searchers = [threading.Thread(target=search, args=(part * 10 + i,)) for i in range(3)]
    writers = [threading.Thread(target=enroll), threading.Thread(target=delete)]
    failures: list[BaseException] = []
    threading.excepthook = lambda hook: failures.append(
        hook.exc_value or RuntimeError("thread died")
    )
    for t in searchers + writers:
        t.start()
    for t in writers:
        t.join()
    writers_done.set()
    for t in searchers:
        t.join()
    gallery.close()
    if failures:
        raise SystemExit(f"{len(failures)} thread(s) failed, first: {failures[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
