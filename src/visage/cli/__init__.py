"""The ``visage`` command line: ``main()`` is the console script; ``python -m visage`` works too."""

from __future__ import annotations

from . import pipeline as _pipeline  # noqa: F401  (registers detect/embed/compare/version)
from . import eval as _eval  # noqa: F401  (registers eval verify/identify and calibrate)
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
