"""The package declares exactly what its code imports, and a plain ``pip install .`` works.

The import graph is checked against ``pyproject.toml`` (fast, every run): a module-level import
must be a core dependency, a guarded import inside a function may be an extra's. The clean
virtualenv test then proves it the way a user meets it: ``pip install .`` with no extras, then
``visage --help``, ``visage detect`` on a real photo and ``import visage``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "visage"

USED_WITHOUT_IMPORT = {
    "face-recognition-models": "weights read with importlib.resources (models/weights.py)",
    "python-multipart": "FastAPI parses multipart uploads with it (server/routes)",
}
"""Declared core dependencies no ``import`` statement names, and why they are needed."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return _canonical(match.group(0))


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {
        extra: {_requirement_name(s) for s in specs}
        for extra, specs in project.get("optional-dependencies", {}).items()
    }
    return core, extras


def _module_owners() -> dict[str, set[str]]:
    """Top-level module -> installed distributions, read from each one's file list (RECORD):
    ``top_level.txt`` is missing or wrong in some wheels (dlib-bin lists only its .so)."""
    owners: dict[str, set[str]] = {}
    for dist in distributions():
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".data")) or top == "..":
                continue
            owners.setdefault(top.split(".")[0], set()).add(_canonical(dist.metadata["Name"]))
    return owners


def _imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(top-level module, line, inside a function) for every absolute import in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], child.lineno, nested) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], child.lineno, nested))
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_import_is_a_declared_dependency() -> None:
    core, extras = _declared()
    optional = set().union(*extras.values())
    owners = _module_owners()
    problems, imported = [], set()
    for path in sorted(SRC.rglob("*.py")):
        for module, line, nested in _imports(ast.parse(path.read_text(), str(path))):
            if module in sys.stdlib_module_names or module in ("visage", "__future__"):
                continue
            where = f"{path.relative_to(REPO)}:{line} imports {module}"
            dists = owners.get(module, set())
            if not dists:
                problems.append(f"{where}, which no installed distribution provides")
                continue
            imported |= dists
            if dists & core:
                continue
            if nested and dists & optional:
                continue  # a guarded import of an extra, inside the function that needs it
            kind = "an extra's module at module level" if dists & optional else "undeclared"
            problems.append(f"{where} ({', '.join(sorted(dists))}): {kind}")
    unused = core - imported - set(USED_WITHOUT_IMPORT)
    problems += [f"{name} is declared but nothing in src/ imports it" for name in sorted(unused)]
    assert not problems, "\n".join(problems)


def test_plain_pip_install_gives_a_working_visage(tmp_path: Path, people_photos: list[Path]) -> None:
    """A clean virtualenv, ``pip install .`` without extras: the CLI starts and detects a face."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"

    def run(*args: str | Path, timeout: int = 900) -> str:
        done = subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0, f"{args}: {done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REPO)
    visage = env_dir / "bin" / "visage"
    assert "Usage" in run(visage, "--help", timeout=120)
    out = run(visage, "detect", "--json", people_photos[0], timeout=300)
    assert '"box"' in out, out
    assert run(python, "-c", "import visage; print(visage.__version__)", timeout=120).strip()
    # The web console's files ship in the wheel (package data), not only in the source tree.
    listed = run(
        python,
        "-c",
        "from importlib.resources import files; "
        "print(sorted(p.name for p in (files('visage.server') / 'console').iterdir()))",
        timeout=120,
    )
    assert all(name in listed for name in ("index.html", "console.js", "console.css")), listed
