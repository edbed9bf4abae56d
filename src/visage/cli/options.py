"""Options shared by every command, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from ..models import DETECTORS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _known_detector(name: str) -> str:
    """A usage error (exit 2, one line) for a detector name the models do not have."""
    if name not in DETECTORS:
        raise typer.BadParameter(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return name


DetectorOpt = Annotated[
    str,
    typer.Option(
        "--detector", "-d", callback=_known_detector,
        help="Face detector: hog (fast, frontal) or cnn (MMOD).",
    ),
]
UpsampleOpt = Annotated[
    int, typer.Option("--upsample", min=0, max=4, help="Upsample the image N times to find small faces.")
]

console = Console()
err_console = Console(stderr=True)


def table(*headers: str, whole: Collection[str] = ()) -> Table:
    """A table that never cuts a value on a narrow terminal: the ``whole`` columns (ids, to be
    copied into the next command) are never broken, every other column wraps instead of
    ending in an ellipsis."""
    return Table(*(
        Column(h, no_wrap=True) if h in whole else Column(h, overflow="fold") for h in headers
    ))


def read_from(url: str) -> None:
    """Say on stderr which store a read-only command read (an empty answer from the wrong
    store looks like an empty store)."""
    from ..gallery.store import shown_url

    err_console.print(f"store: {shown_url(url)}", markup=False, highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout (no Rich markup, stable key order)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
