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

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_help(super().get_help_option)(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisageError as exc:
            typer.echo(f"error: {utf8_text(str(exc))}", err=True)
            raise typer.Exit(1) from None


_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER",
               "float range": "NUMBER", "path": "PATH", "file": "FILE", "directory": "FOLDER"}  # fmt: skip
"""What a value column says for Typer's type labels (``<str>`` → ``TEXT``)."""


def _reflow(command: Any) -> None:
    """Each paragraph of a command's docstring (and its sub-commands') as one line, for Rich
    to wrap at the terminal's width: Typer keeps the docstring's own line breaks, which break
    sentences in two at 80 columns. Value columns name a kind of value (``TEXT``, ``PATH``), and
    flags none, where Typer prints Python's type names (``<str>``, ``<bool>``)."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for param in getattr(command, "params", []):
        _name_value(param)
    command.get_help_option = _quiet_help(command.get_help_option)
    for sub in getattr(command, "commands", {}).values():
        _reflow(sub)


def _name_value(param: Any) -> None:
    """Set the value column of one parameter: nothing for a flag, the argument's own name in
    capitals (as the docstrings call it), else the kind of value."""
    if param.metavar is not None or not hasattr(param, "display_type"):
        return
    if getattr(param, "is_flag", False):
        param.metavar = ""
    elif param.param_type_name == "argument":
        param.metavar = param.name.upper()
    else:
        label = (param.display_type(None) or "").strip("<>")
        param.metavar = _TYPE_NAMES.get(label, label.upper() if "|" in label else label)


def _quiet_help(get_help_option: Any) -> Any:
    """``--help`` is a flag too: Click builds it on demand, so name its value once it exists."""

    def wrapped(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            _name_value(option)
        return option

    return wrapped


app = typer.Typer(
    cls=_VisageGroup,
    name="visage",
    help="Visage: self-hosted, accountable face recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
