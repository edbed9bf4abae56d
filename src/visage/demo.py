"""``make run`` until the HTTP service lands: a short tour of the CLI on the labelled photos.

Runs ``visage detect``, ``visage compare`` (same person, then different people) and
``visage embed`` on photos from ``$VISAGE_FACES`` (default ``../shared/faces``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from .cli import app

console = Console()


def _run(*args: str) -> None:
    console.rule(f"[bold]$ visage {' '.join(args)}")
    result = CliRunner().invoke(app, list(args))
    console.print(result.stdout, end="", markup=False, highlight=False)
    if result.stderr:
        console.print(result.stderr, end="", style="yellow", markup=False, highlight=False)


def main() -> int:
    root = Path(os.environ.get("VISAGE_FACES") or Path.cwd().parent / "shared" / "faces")
    people = sorted(p for p in (root / "people").glob("*") if p.is_dir())
    if len(people) < 2:
        console.print(f"No labelled photos under {root}/people: set VISAGE_FACES to the faces folder.")
        return 1
    first, second = sorted(people[0].glob("*.jpg")), sorted(people[1].glob("*.jpg"))
    _run("version")
    _run("detect", str(first[0]))
    _run("compare", str(first[0]), str(first[1]))
    _run("compare", str(first[0]), str(second[0]))
    with tempfile.TemporaryDirectory() as tmp:
        _run("embed", str(people[0]), "--out", str(Path(tmp) / "faces.parquet"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
