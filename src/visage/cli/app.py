"""The root Typer application; command modules attach their commands to :data:`app`."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import VisageError
from ..names import utf8_text


class _VisageGroup(TyperGroup):
    """Turns Visage's operational errors into one line on stderr and exit code 1.

    Done at the group level so every command, and Typer's test runner, gets the same
    behaviour: users never see a traceback for bad input.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _reflow(command)
        return command

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisageError as exc:
            typer.echo(f"error: {utf8_text(str(exc))}", err=True)
            raise typer.Exit(1) from None


def _reflow(command: Any) -> None:
    """Each paragraph of a command's docstring (and its sub-commands') as one line, for Rich
    to wrap at the terminal's width: Typer keeps the docstring's own line breaks, which break
    sentences in two at 80 columns."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for sub in getattr(command, "commands", {}).values():
        _reflow(sub)


app = typer.Typer(
    cls=_VisageGroup,
    name="visage",
    help="Visage: self-hosted, accountable face recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
