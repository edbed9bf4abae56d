"""CLI start-up: wall time of ``visage --help`` (process start included) against ``python -c pass``.

    .venv/bin/python benchmarks/cli_start.py [--runs 5] [--command "visage version"]

Each command is run ``--runs`` times, interleaved so that load on the machine hits both alike;
the best run of each is reported with their ratio. The target (issue 13) is ``visage --help``
within 0.5 s: the command modules import the gallery, server, edge and eval code only when a
command runs, so the help needs only Typer, Rich and the ``visage`` package.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def wall(argv: list[str]) -> float:
    """Seconds from spawning ``argv`` to its exit; a failure is an error, not a fast run."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--command", default="visage --help", help="The visage command to time.")
    args = parser.parse_args()
    words = shlex.split(args.command)
    script = Path(sys.executable).with_name(words[0])
    visage = [str(script), *words[1:]] if script.exists() else [sys.executable, "-m", "visage", *words[1:]]
    baseline = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {"visage": [], "baseline": []}
    for _ in range(args.runs):
        times["visage"].append(wall(visage))
        times["baseline"].append(wall(baseline))
    best, base = min(times["visage"]), min(times["baseline"])
    print(f"{args.command}: best {best * 1000:.0f} ms of {args.runs} "
          f"(median {sorted(times['visage'])[args.runs // 2] * 1000:.0f} ms)")
    print(f"python -c pass: best {base * 1000:.0f} ms")
    print(f"ratio to baseline: {best / base:.1f}x; target 500 ms: {'met' if best <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
