"""Two promises checked by reading ``src/visage`` (README.md, DESIGN.md):

- **nothing is downloaded at run time**: no module but the edge uplink imports a network
  client, and the model-loading code holds no URL;
- **Visage never infers race, gender, age or emotion**: no function, class, argument,
  attribute, keyword, dictionary key or route names such an attribute. Prose (docstrings and
  comments, e.g. a sentence stating the refusal) is not code and is not checked.

Each check first finds what it looks for in a planted snippet, so a scanner that sees nothing
cannot pass.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "visage"

NETWORK_MODULES = {
    "aiohttp", "ftplib", "http.client", "httpx", "requests", "smtplib", "socket", "urllib.request",
    "urllib3", "huggingface_hub", "pycurl", "websocket", "websockets",
}  # fmt: skip
NETWORK_ALLOWED = {
    "edge/sync.py": "httpx: the device uploads to the operator's own server (--server URL)",
}
"""Modules allowed a network client, and why."""

MODEL_CODE = ("models", "pipeline.py", "align.py", "quality.py", "decision.py")
"""Where weights and calibrations are found and loaded."""

DEMOGRAPHIC_WORDS = {
    "race", "races", "racial", "ethnic", "ethnicity", "gender", "genders", "sex", "age", "ages",
    "emotion", "emotions", "expression", "mood", "skin", "skintone",
}  # fmt: skip


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path))


def imported(tree: ast.AST) -> set[str]:
    """Every module an ``import`` names, with each of its parents (``urllib.request`` gives
    ``urllib`` too); relative imports are Visage's own and skipped."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            full = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            full = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in full:
            parts = name.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def network_imports(tree: ast.AST) -> set[str]:
    return imported(tree) & NETWORK_MODULES


def urls(tree: ast.AST) -> list[str]:
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.search(r"\b(?:https?|ftp)://", node.value)
        and not _is_docstring(tree, node)
    ]


def _is_docstring(tree: ast.AST, constant: ast.Constant) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and body[0].value is constant:
                return True
        if isinstance(node, ast.Expr) and node.value is constant:
            return True  # a bare string statement (attribute docstrings)
    return False


def words(identifier: str) -> set[str]:
    """``estimate_Age`` and ``estimateAge`` give {estimate, age}; ``/v1/faces/age`` gives
    {v1, faces, age}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", identifier)
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}


def named(tree: ast.AST) -> Iterator[str]:
    """Every name code gives: definitions, arguments, attributes, keywords, variables,
    dictionary keys and route paths (string constants starting with ``/``)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.keyword) and node.arg:
            yield node.arg
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Dict):
            yield from (k.value for k in node.keys if isinstance(k, ast.Constant)
                        and isinstance(k.value, str))  # fmt: skip
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("/")
            and " " not in node.value
        ):
            yield node.value


def demographic_names(tree: ast.AST) -> set[str]:
    return {name for name in named(tree) if words(name) & DEMOGRAPHIC_WORDS}


PLANTED = ast.parse('''
"""Visage never infers age or gender."""
import urllib.request
from huggingface_hub import hf_hub_download
WEIGHTS = "https://example.org/resnet.dat"

@router.get("/v1/faces/{face}/emotion")
def estimateAge(face, skin_tone=None):
    return {"gender": face.predicted_race}
''')


def test_the_scanners_find_what_they_look_for() -> None:
    assert network_imports(PLANTED) == {"urllib.request", "huggingface_hub"}
    assert urls(PLANTED) == ["https://example.org/resnet.dat"]
    assert demographic_names(PLANTED) == {
        "/v1/faces/{face}/emotion",
        "estimateAge",
        "skin_tone",
        "gender",
        "predicted_race",
    }  # fmt: skip; and the module docstring stating the refusal is not flagged


def test_nothing_is_downloaded_at_run_time() -> None:
    found = {name: network_imports(tree) for name, tree in sources()}
    clients = {name: mods for name, mods in found.items() if mods}
    assert set(clients) == set(NETWORK_ALLOWED), clients  # edge/sync.py is seen (the control)
    in_model_code = {
        name: urls(tree) for name, tree in sources() if name.startswith(MODEL_CODE) and urls(tree)
    }
    assert in_model_code == {}


def test_no_code_names_race_gender_age_or_emotion() -> None:
    trees = dict(sources())
    assert len(trees) > 50 and "server/routes/search.py" in trees  # the whole package is read
    found = {name: demographic_names(tree) for name, tree in trees.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}
