"""The ``visage`` command line: ``main()`` is the console script; ``python -m visage`` works too."""

from __future__ import annotations

from . import edge as _edge  # noqa: F401  (registers video and edge run/pull/status/keygen)
from . import eval as _eval  # noqa: F401  (registers eval verify/identify and calibrate)
from . import gallery as _gallery  # noqa: F401  (registers enroll, identify, persons, audit, …)
from . import pipeline as _pipeline  # noqa: F401  (registers detect/embed/compare/version)
from . import server as _server  # noqa: F401  (registers serve and keys create/list/revoke)
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
