"""Run by test_erasure.py: a second process holding a collection's index while the test deletes.

``snapshot_worker.py URL INDEX_DIR``, then one command a line on stdin: ``load`` brings the
``people`` index in line with the store (saving a snapshot when it rebuilds), ``delete P``
deletes person ``P`` (so the in-memory index is ahead of its snapshot), ``save`` saves changed
indexes, ``close`` closes the gallery (which saves too) and exits. Each command is
answered with one line, ``done <command> <templates in the in-memory index>``.
"""

from __future__ import annotations

import sys

from visage.decision import Calibration
from visage.gallery import Gallery


def main(url: str, index_dir: str) -> None:
    cal = Calibration("synthetic-128", 0.6, "fixed", "snapshot test", "2026-11-29", 0, 0)
    gallery = Gallery(url, index_dir=index_dir, calibrations=[cal], actor="snapshot-worker")
    held = 0
    for line in sys.stdin:
        command, *args = line.split()
        if command == "load":
            held = gallery.index("people").count()
        elif command == "delete":
            gallery.delete_person("people", args[0])
            held = gallery.index("people").count()
        elif command == "save":
            gallery.save_indexes()
        elif command == "close":
            gallery.close()
        print(f"done {command} {held}", flush=True)
        if command == "close":
            return


if __name__ == "__main__":
    main(*sys.argv[1:3])
