"""Prove the tests bite: break each promise on purpose and check its guarding tests fail.

    .venv/bin/python tools/promises.py [--only ID ...] [--write docs/promises.md]   (make promises)

Each :class:`Break` is one small patch that switches a documented promise off (secure delete
off, the probe written into the audit, consent dropped from import, ...). For each, the tracked
and untracked files of the repository are copied to a scratch folder, the patch is applied
there (its ``old`` text must occur exactly once: a stale break is an error, not a pass), and the
guarding tests run against that copy. A break is *caught* when they fail. First the same tests
run on the unbroken copy and must pass, or nothing would be proved. Exit status 0 only when
every break is caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    """A promise, where it is made, one patch that breaks it, and the tests that must notice."""

    id: str
    promise: str
    made_in: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKS = (
    Break(
        "probe-in-audit",
        "Probes are never stored: not in any table, not in any store file.",
        "README.md, docs/gallery.md",
        "src/visage/gallery/service.py",
        'session, state, "identify", actor=actor, collection=collection, purpose=purpose,\n'
        "                input_hash=resolved.sha256, k=k,",
        'session, state, "identify", actor=actor, collection=collection, purpose=purpose,\n'
        "                input_hash=resolved.sha256, probe=[round(float(x), 5) for x in "
        "resolved.vector], k=k,",
        ("tests/gallery/test_probes.py",),
    ),
    Break(
        "import-skips-consent",
        "Import applies every rule enroll applies: no templates without valid consent.",
        "docs/gallery.md",
        "src/visage/gallery/service.py",
        "            if templates:\n                self._require_consent(session, row, now)\n",
        "",
        ("tests/gallery/test_import_rules.py",),
    ),
    Break(
        "expired-consent-searchable",
        "Expired consent excludes a person from search.",
        "DESIGN.md, docs/gallery.md",
        "src/visage/gallery/service.py",
        "        or_(ConsentRow.expires_at.is_(None), ConsentRow.expires_at > now),\n    )",
        "    )",
        ("tests/gallery/test_service.py",),
    ),
    Break(
        "audit-chain-unlinked",
        "The audit log is a hash chain: `visage audit verify` names the first broken link.",
        "README.md, docs/gallery.md",
        "src/visage/gallery/audit.py",
        "        if row.prev_hash != prev:",
        "        if False:",
        ("tests/gallery/test_audit.py",),
    ),
    Break(
        "tracker-ignores-identity",
        "A video track never carries a name across a change of person.",
        "docs/performance-edge.md, src/visage/edge/tracker.py",
        "src/visage/edge/tracker.py",
        "        appearance = track.appearance()\n        return (",
        "        appearance = None\n        return (",
        ("tests/edge/test_tracker.py",),
    ),
    Break(
        "compare-largest-face",
        "A photo with several faces is refused unless a face is picked, on every route.",
        "docs/server.md, src/visage/pipeline.py",
        "src/visage/pipeline.py",
        "    if face is None:\n        if len(faces) > 1:",
        "    if face is None:\n        if False:",
        ("tests/test_cli.py::test_compare_refuses_several_faces_unless_one_is_picked",),
    ),
    Break(
        "int8-unchecked",
        "INT8 is used only where its drift on this CPU stays within the bound; else fp32.",
        "docs/performance-runtime.md",
        "src/visage/models/int8.py",
        "        in_use=bool(moved.max() <= bound),",
        "        in_use=True,",
        ("tests/models/test_onnx_equivalence.py::test_int8_falls_back_with_one_warning_naming_the_cpu",),
    ),
    Break(
        "int8-full-range",
        "INT8 holds on AVX2 CPUs without VNNI (7-bit weights).",
        "docs/performance-runtime.md",
        "src/visage/models/int8.py",
        "            reduce_range=True,\n",
        "            reduce_range=False,\n",
        ("tests/models/test_onnx_equivalence.py::test_int8_holds_on_avx2_without_vnni",),
    ),
)


def _copy_repo(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _apply(root: Path, brk: Break) -> bool:
    """Patch the copy; False when ``old`` does not occur exactly once (a stale break)."""
    path = root / brk.file
    text = path.read_text()
    if text.count(brk.old) != 1:
        return False
    path.write_text(text.replace(brk.old, brk.new))
    return True


def _run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("VISAGE_FACES", str(REPO.parent / "shared" / "faces"))
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, time.monotonic() - start, tail[-1] if tail else ""


def _table(rows: list[tuple[Break, str, float]]) -> str:
    lines = ["| promise | made in | break | guarding tests | result |", "|---|---|---|---|---|"]
    for brk, verdict, seconds in rows:
        tests = "<br>".join(f"`{t}`" for t in brk.tests)
        lines.append(f"| {brk.promise} | {brk.made_in} | `{brk.id}` ({brk.file}) | {tests} | "
                     f"{verdict} ({seconds:.0f} s) |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", help="break ids to run (default: all)")
    parser.add_argument("--write", type=Path, help="write the table to this markdown file")
    args = parser.parse_args()
    chosen = [b for b in BREAKS if not args.only or b.id in args.only]
    rows: list[tuple[Break, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="visage-promises-") as tmp:
        clean = Path(tmp) / "clean"
        _copy_repo(clean)
        guards = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        code, seconds, last = _run_tests(clean, guards)
        print(f"unbroken: {last} ({seconds:.0f} s)")
        if code != 0:
            print("the guarding tests fail without any break: fix them first")
            return 2
        for brk in chosen:
            root = Path(tmp) / brk.id
            shutil.copytree(clean, root)
            if not _apply(root, brk):
                code, seconds, last = -1, 0.0, f"the text to break is not once in {brk.file}"
            else:
                code, seconds, last = _run_tests(root, brk.tests)
            verdict = {1: "caught", 0: "MISSED", -1: "STALE"}.get(code, f"error {code}")
            print(f"{brk.id:28s} {verdict:8s} {seconds:5.0f} s  {last}")
            rows.append((brk, verdict, seconds))
            shutil.rmtree(root)
    caught = sum(v == "caught" for _, v, _ in rows)
    print(f"\n{caught} of {len(rows)} breaks caught")
    if args.write:
        command = "make promises  # .venv/bin/python tools/promises.py --write docs/promises.md"
        args.write.write_text(
            "# Promises and the tests that guard them\n\n"
            "Each promise the README and docs make, the test that guards it, and one deliberate "
            "break of it (a small patch applied to a scratch copy of the repository). A break "
            "is *caught* when its guarding tests fail. Produced by\n\n"
            f"    {command}\n\n{_table(rows)}\n\n{caught} of {len(rows)} breaks caught.\n"
        )
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
