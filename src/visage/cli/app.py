"""The root Typer application; command modules attach their commands to :data:`app`."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import VisageError


class _VisageGroup(TyperGroup):
    """Turns Visage's operational errors into one line on stderr and exit code 1.

    Done at the group level so every command, and Typer's test runner, gets the same
    behaviour: users never see a traceback for bad input.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisageError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_VisageGroup,
    name="visage",
    help="Visage: self-hosted, accountable face recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
