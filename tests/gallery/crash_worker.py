"""Run by test_crash.py in a subprocess that gets SIGKILLed mid-work.

``crash_worker.py URL INDEX_DIR enroll|delete|search``: enrolls batches of templates (or
deletes persons one by one) forever, saving index snapshots after each step, and prints one line
after each commit so the test knows work is under way. ``search``: four threads identify
forever and print ``answered SEQ`` as each answer returns (its audit event's sequence number).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from visage.decision import Calibration
from visage.gallery import EmbeddingItem, Gallery

BATCH = 400


def main(url: str, index_dir: str, mode: str) -> None:
    cal = Calibration("synthetic-128", 0.6, "fixed", "crash test", "2026-11-29", 0, 0)
    gallery = Gallery(url, index_dir=index_dir, calibrations=[cal], actor="crash-worker")
    persons = [p.id for p in gallery.persons("people", limit=10_000)]
    rng = np.random.default_rng()
    if mode == "search":
        _search(gallery)
        return
    step = 0
    while True:
        if mode == "enroll":
            vectors = rng.standard_normal((BATCH, 128)).astype(np.float32)
            items = [EmbeddingItem(persons[i % len(persons)], v) for i, v in enumerate(vectors)]
            gallery.enroll_many("people", items, batch_size=BATCH)
        else:
            if step >= len(persons):
                break
            gallery.delete_person("people", persons[step])
        gallery.save_indexes()
        step += 1
        print(f"committed {step}", flush=True)


def _search(gallery: Gallery) -> None:
    printing = threading.Lock()

    def loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while True:
            answer = gallery.identify("people", rng.standard_normal(128), purpose="crash test")
            with printing:
                print(f"answered {answer.audit_seq}", flush=True)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(*sys.argv[1:4])
