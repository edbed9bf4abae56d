"""Rich progress bars for long work, shown only on a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .options import err_console


@contextmanager
def progress_bar(label: str, *, total: int, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yields ``advance()``; draws a bar on stderr when it is a terminal and ``enabled``."""
    if not enabled or not err_console.is_terminal:
        yield lambda: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
