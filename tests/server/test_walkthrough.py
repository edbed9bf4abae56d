"""docs/walkthrough.md, run: every curl command on the page, in order, against a real server.

Each command's status must be the one the page shows, and every field the page shows must be
in the answer (booleans, nulls and plain strings equal; ids, hashes and numbers only present),
so a user following the page gets what it says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, start_server, stop_server

PAGE = Path(__file__).resolve().parents[2] / "docs" / "walkthrough.md"
STEP = re.compile(r"```sh\n(?P<cmd>.*?)\n```\n→ (?P<status>\d{3})\n```json\n(?P<json>.*?)\n```", re.DOTALL)
VARYING = re.compile(r"^[0-9a-f]{16,}…?$|…$")


def _holds(shown: Any, got: Any, where: str) -> list[str]:
    """Where ``got`` lacks or contradicts what the page ``shown``."""
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected an object, got {got!r}"]
        return [p for k, v in shown.items() for p in
                (_holds(v, got[k], f"{where}.{k}") if k in got else [f"{where}.{k}: missing"])]  # fmt: skip
    if isinstance(shown, list):
        if not isinstance(got, list) or (shown and not got):
            return [f"{where}: expected a non-empty list, got {got!r}"]
        return _holds(shown[0], got[0], f"{where}[0]") if shown else []
    if isinstance(shown, bool) or shown is None:
        return [] if got is shown else [f"{where}: {got!r}, the page says {shown!r}"]
    if isinstance(shown, str) and not VARYING.search(shown):
        return [] if got == shown else [f"{where}: {got!r}, the page says {shown!r}"]
    return [] if isinstance(got, type(shown)) or isinstance(shown, float) else [f"{where}: type"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough runs curl")
def test_the_walkthrough_does_what_it_says(
    tmp_path_factory: pytest.TempPathFactory, people_photos: list[Path]
) -> None:
    steps = list(STEP.finditer(PAGE.read_text()))
    assert len(steps) >= 9, "the page's steps were not found"
    person = [p for p in people_photos if p.parent.name == "Angelina_Jolie"]
    server: Server = start_server(tmp_path_factory.mktemp("walkthrough"))
    try:
        env = {**os.environ, "VISAGE": server.url, "KEY": server.admin,
               "PHOTO": str(person[0]), "PROBE": str(person[2])}  # fmt: skip
        for step in steps:
            command = step["cmd"] + " -w '\\n%{http_code}'"
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                                  text=True, timeout=120, check=False)  # fmt: skip
            body, status = done.stdout.rsplit("\n", 1)
            assert status == step["status"], (step["cmd"], status, body)
            problems = _holds(json.loads(step["json"]), json.loads(body), "answer")
            assert not problems, (step["cmd"], problems, body)
    finally:
        stop_server(server)
