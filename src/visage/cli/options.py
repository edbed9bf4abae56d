"""Options shared by every command, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.style import StyleType
from rich.table import Column, Table
from rich.text import Text

from ..models import DETECTORS
from ..names import printable

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
        help="Face detector: hog (dlib, frontal), cnn (MMOD), blazeface or blazeface-short "
        "(MediaPipe, 6x and 14x faster than hog; the fast-detector extra).",
    ),
]
UpsampleOpt = Annotated[
    int, typer.Option("--upsample", min=0, max=4, help="Upsample the image N times to find small faces.")
]

FollowOpt = Annotated[
    bool,
    typer.Option("--follow-symlinks", help="Follow symbolic links that lead out of the folder "
                 "given (by default they are reported and skipped)."),
]

console = Console()
err_console = Console(stderr=True)


class PlainTable(Table):
    """A Rich table whose string cells are plain text (:func:`visage.names.printable`): a stored
    name such as ``Mallory [/]`` or ``[link=…]`` is shown as it is, never read as Rich markup,
    and a control character in it cannot drive the terminal (a line break stays one: inside a
    cell it can only start a line of that cell)."""

    def add_row(
        self, *renderables: RenderableType | None, style: StyleType | None = None,
        end_section: bool = False,
    ) -> None:
        cells = (Text("\n".join(map(printable, c.split("\n")))) if isinstance(c, str) else c
                 for c in renderables)
        super().add_row(*cells, style=style, end_section=end_section)


def table(*headers: str, whole: Collection[str] = ()) -> PlainTable:
    """The table every command prints (a :class:`PlainTable`), never cutting a value on a
    narrow terminal: the ``whole`` columns (ids, to be copied into the next command) are never
    broken, every other column wraps instead of ending in an ellipsis."""
    return PlainTable(*(
        Column(h, no_wrap=True) if h in whole else Column(h, overflow="fold") for h in headers
    ))


def read_from(url: str) -> None:
    """Say on stderr which store a read-only command read (an empty answer from the wrong
    store looks like an empty store)."""
    from ..store import shown_url

    err_console.print(f"store: {shown_url(url)}", markup=False, highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout (no Rich markup, stable key order)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


RayOpt = Annotated[
    str | None,
    typer.Option("--ray", metavar="ADDRESS",
                 help="Embed on a Ray cluster (pip install 'visage[ray]'): 'local' starts Ray "
                      "on this machine, 'auto' or host:port or ray://host:10001 joins one. "
                      "Same table, same resume; see docs/ray.md."),
]


def ray_address(value: str) -> str | None:
    """The address :func:`visage.bulk_ray.connect` takes for ``--ray VALUE``: ``local`` is
    ``None`` (start Ray here, or join ``RAY_ADDRESS``)."""
    return None if value == "local" else value
