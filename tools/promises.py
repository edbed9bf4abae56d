"""Prove the tests bite: break each promise on purpose and check its guarding tests fail.

    .venv/bin/python tools/promises.py [--only ID ...] [--no-control] [--write docs/promises.md]

Each :class:`Break` is one small patch that switches a documented promise off (secure delete
off, the probe written into the audit, consent dropped from import, ...). For each, the tracked
and untracked files of the repository are copied to a scratch folder, the patch is applied
there (its ``old`` text must occur exactly once: a stale break is an error, not a pass), and the
guarding tests run against that copy. A break is *caught* when they fail. First the same tests
run on the unbroken copy and must pass, or nothing would be proved; ``make test`` skips that
control run (``--no-control``, ~5 min) because it runs the whole suite on the same files just
before. Exit status 0 only when every break is caught.

Two breaks run at once (``--jobs``; each copy has its own pytest temp folder): most guarding
tests wait on a server or a subprocess, so the second core is otherwise idle. A break whose
tests hold a wall-clock budget or race on purpose is marked ``alone`` and runs by itself after
the others, so load from a neighbour can never be what makes its tests fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
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
    alone: bool = False
    """Its tests hold a wall-clock budget or race on purpose: run with no other break beside it."""


BREAKS = (
    Break(
        "probe-in-audit",
        "Probes are never stored: not in any table, not in any store file.",
        "README.md, docs/gallery.md",
        "src/visage/gallery/service.py",
        '"identify", actor=actor, collection=collection, purpose=purpose,\n'
        "            input_hash=input_hash or resolved.sha256, k=k, unknown=unknown,",
        '"identify", actor=actor, collection=collection, purpose=purpose,\n'
        "            input_hash=input_hash or resolved.sha256, probe=[round(float(x), 5) for x "
        "in resolved.vector], k=k, unknown=unknown,",
        ("tests/gallery/test_probes.py",),
    ),
    Break(
        "import-skips-consent",
        "Import applies every rule enroll applies: no templates without valid consent.",
        "docs/gallery.md",
        "src/visage/gallery/service.py",
        "            if templates:\n                _refuse_without_consent(row, consent_rows, now)\n",
        "",
        ("tests/gallery/test_import_rules.py",),
    ),
    Break(
        "import-visible-half-done",
        "An import appears whole or not at all: nobody sees a half-imported collection.",
        "docs/gallery.md",
        "src/visage/gallery/service.py",
        '                name=f"{STAGING}{uuid.uuid4().hex}",\n',
        "                name=target,\n",
        ("tests/gallery/test_import_stream.py",),
    ),
    Break(
        "import-reads-whole-file",
        "An import's memory does not grow with the file (streamed, batch by batch).",
        "docs/gallery.md",
        "src/visage/gallery/service.py",
        "            for number, record in lines:\n",
        "            for number, record in list(lines):\n",
        ("tests/gallery/test_import_stream.py::test_memory_does_not_grow_with_the_file",),
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
        "src/visage/store/audit.py",
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
        "wal-keeps-erased",
        "After a deletion commits, no byte of the template is in any store file (WAL included).",
        "docs/gallery.md",
        "src/visage/store/files.py",
        '.execute("PRAGMA wal_checkpoint(TRUNCATE)")',
        '.execute("PRAGMA wal_checkpoint(PASSIVE)")',
        ("tests/gallery/test_erasure.py::test_erased_bytes_leave_every_store_file_while_it_is_open",),
    ),
    Break(
        "secure-delete-off",
        "Deleted templates are zeroed in the database file, not left in free pages.",
        "docs/gallery.md, src/visage/store/engine.py",
        "src/visage/store/engine.py",
        'cursor.execute("PRAGMA secure_delete = ON")',
        'cursor.execute("PRAGMA secure_delete = OFF")',
        ("tests/gallery/test_erasure.py::test_erased_bytes_leave_every_store_file_while_it_is_open",),
    ),
    Break(
        "stale-snapshot-saved",
        "No index snapshot ever holds a template deleted by this or another process.",
        "docs/gallery.md",
        "src/visage/gallery/index_cache.py",
        "        if loaded.version != version:\n            del self._loaded[coll_id]\n            return\n",
        "",
        ("tests/gallery/test_erasure.py::test_no_snapshot_ever_holds_a_template_another_process_deleted",),
    ),
    Break(
        "edge-rows-survive-deletion",
        "Deleting a person or revoking consent deletes their edge events and crops.",
        "docs/gallery.md",
        "src/visage/gallery/service.py",
        "        removed = int(cast(CursorResult[Any], session.execute(events)).rowcount)",
        "        removed = 0",
        ("tests/edge/test_hub.py::test_deletions_purge_edge_rows_in_the_same_transaction",),
    ),
    Break(
        "refusal-not-audited",
        "Every refused biometric operation writes its audit event.",
        "docs/gallery.md, docs/server.md",
        "src/visage/gallery/service.py",
        "            self.record_refusal(action, collection, exc, purpose=purpose, actor=actor, **summary)\n",
        "",
        ("tests/server/test_refusals.py",),
    ),
    Break(
        "threshold-ignores-gallery-size",
        "Identify holds its target FPIR at the collection's current size.",
        "docs/gallery.md, docs/accuracy.md",
        "src/visage/gallery/service.py",
        "            coll.model_id, coll.target_fpir, templates, persons, own=coll.open_set\n",
        "            coll.model_id, coll.target_fpir, min(1, templates), persons, own=coll.open_set\n",
        ("tests/gallery/test_open_set.py",),
    ),
    Break(
        "margin-loosens-past-its-ceiling",
        "The margin rule never names a probe beyond the one-person bar, and holds the target FPIR.",
        "docs/accuracy.md",
        "src/visage/decision.py",
        "        return round(min(self.ceiling, math.sqrt(max(0.0, room))), 6)",
        "        return round(max(self.ceiling, math.sqrt(max(0.0, room))), 6)",
        ("tests/gallery/test_open_set.py",),
    ),
    Break(
        "offline-ignores-margin",
        "An edge device decides offline by the gallery's identify rule at the snapshot's size.",
        "docs/server.md",
        "src/visage/edge/snapshot.py",
        "        bar = self.threshold if point is None else point.threshold_for(second)",
        "        bar = self.threshold",
        ("tests/edge/test_snapshot.py::test_offline_decisions_follow_the_gallery_identify_rule",),
    ),
    Break(
        "verify-counts-later-checkpoints",
        "A verification is not fooled by checkpoints written while it reads the chain.",
        "docs/gallery.md",
        "src/visage/store/audit.py",
        "    checkpoints = iter(CheckpointReader(anchors, upto))",
        "    checkpoints = iter(CheckpointReader(anchors))",
        ("tests/gallery/test_anchor.py::test_a_checkpoint_written_while_the_chain_is_read_is_not_a_cut",),
    ),
    Break(
        "milvus-delete-is-a-tombstone",
        "A deletion erases the vectors from Milvus's files, not only marks them deleted.",
        "docs/gallery.md",
        "src/visage/gallery/milvus.py",
        "        for bucket in np.unique(gone // PARTITION_IDS):",
        "        for bucket in np.unique(gone // PARTITION_IDS)[:0]:",
        ("tests/gallery/test_milvus.py::test_erased_vectors_leave_every_milvus_file",),
    ),
    Break(
        "console-renders-html",
        "The web console shows every stored string as text: a hostile name runs nothing.",
        "docs/console.md",
        "src/visage/server/console/console.js",
        '    else if (name === "text") node.textContent = String(value);',
        '    else if (name === "text") node.innerHTML = String(value);',
        ("tests/server/test_console.py::test_a_hostile_name_is_shown_as_text_and_runs_nothing",),
    ),
    Break(
        "console-csp-allows-inline",
        "The console's Content-Security-Policy allows no inline or foreign script.",
        "docs/console.md",
        "src/visage/server/headers.py",
        "script-src 'self';",
        "script-src 'self' 'unsafe-inline' *;",
        ("tests/server/test_console.py::test_the_console_is_served_with_a_strict_csp_and_no_framing",),
    ),
    Break(
        "candidates-disclosed",
        "A key without the enroll scope sees only candidates within the threshold.",
        "docs/server.md",
        "src/visage/gallery/service.py",
        '    return disclose == "all" or same',
        "    return True",
        ("tests/server/test_exposure.py::test_an_identify_only_key_sees_only_matches",),
    ),
    Break(
        "hidden-characters-in-names",
        "Names hold no control, format (bidi, zero-width) or odd separator characters.",
        "docs/gallery.md",
        "src/visage/gallery/records.py",
        '        if category in ("Cc", "Cf") or (category.startswith("Z") and char != " "):',
        "        if False:",
        ("tests/server/test_input_rules.py::test_names_with_hidden_characters_are_refused",),
    ),
    Break(
        "device-figures-trusted",
        "A device cannot forge a sighting: the server stores its own person and distance.",
        "docs/gallery.md",
        "src/visage/server/hub.py",
        "person_id=figures.person_id, distance=figures.distance, decided_by=by,",
        "person_id=event.decision.person_id if event.decision else figures.person_id,\n"
        "                        distance=event.decision.distance if event.decision else "
        "figures.distance, decided_by=by,",
        ("tests/server/test_edge_consent.py::test_a_forged_sighting_is_rescored_and_flagged",),
    ),
    Break(
        "edge-idempotency-ignored",
        "An edge event is stored once: an upload retried after a lost answer comes back duplicate.",
        "docs/gallery.md, src/visage/edge/sync.py",
        "src/visage/server/hub.py",
        "                if event.key in existing or event.key in receipts:",
        "                if event.key in receipts:",
        ("tests/edge/test_agent.py::test_offline_identification_delivered_exactly_once",),
        alone=True,
    ),
    Break(
        "audit-writers-unlocked",
        "Writers in several server processes on one store queue on one lock: one linear chain.",
        "docs/gallery.md, docs/server.md",
        "src/visage/store/tables.py",
        ".where(StateRow.id == 1).with_for_update()",
        ".where(StateRow.id == 1)",
        ("tests/server/test_workers.py::test_writers_on_two_servers_sharing_one_store_keep_one_chain",),
        alone=True,
    ),
    Break(
        "search-never-refetches",
        "A search returns k persons even when the index's first candidates are filtered out.",
        "docs/gallery.md, src/visage/gallery/service.py",
        "src/visage/gallery/service.py",
        "            fetch = min(total, fetch * 4)",
        "            return ranked",
        ("tests/gallery/test_service.py::test_search_asks_the_index_for_more_when_its_first_candidates_are_filtered_out",),
    ),
    Break(
        "auto-index-never-switches",
        'index="auto" is exact below 50,000 templates and IVF from 50,000.',
        "docs/gallery.md, src/visage/gallery/service.py",
        "src/visage/gallery/index_cache.py",
        "    return AUTO_FAISS_SPEC if count >= AUTO_FAISS_AT else \"exact\"",
        "    return AUTO_FAISS_SPEC if count > AUTO_FAISS_AT else \"exact\"",
        ("tests/gallery/test_index.py::test_auto_is_exact_below_50000_templates_and_ivf_from_there",),
    ),
    Break(
        "tta-family-calibration",
        "Mirrored-chip (--tta) descriptors decide by their own shipped calibration, not the plain model's.",
        "docs/accuracy.md, src/visage/decision.py",
        "src/visage/decision.py",
        "    found: dict[str, Any] | None = records.get(model_id) or records.get(model_family(model_id))",
        "    found: dict[str, Any] | None = records.get(model_family(model_id))",
        ("tests/gallery/test_open_set.py::test_mirrored_chip_descriptors_decide_by_their_own_calibration",),
    ),
    Break(
        "weights-unchecked",
        "Corrupted weights are refused with one line naming the file and its sha256.",
        "src/visage/models/weights.py",
        "src/visage/models/weights.py",
        "    if digest.hexdigest() != spec.sha256:",
        "    if False:",
        (
            "tests/models/test_weights.py::test_corrupted_shipped_weights_are_refused_in_one_line",
            "tests/models/test_blazeface.py::test_corrupted_blazeface_weights_are_refused_in_one_line",
        ),
    ),
    Break(
        "large-photo-shrunk-for-tiles",
        "BlazeFace's tiles find 40-pixel faces in large photos (the pipeline does not shrink them).",
        "docs/performance.md, src/visage/pipeline.py",
        "src/visage/pipeline.py",
        '        if getattr(self.detector, "tiled", False):',
        "        if False:",
        ("tests/models/test_blazeface.py::test_tiles_find_40_pixel_faces_in_a_large_photo",),
    ),
    Break(
        "server-hides-tiled",
        "A server started with the BlazeFace detector finds 40-pixel faces in a 4000x3000 photo.",
        "docs/server.md, docs/performance.md",
        "src/visage/server/runtime.py",
        '        self.tiled: bool = getattr(inner, "tiled", False)',
        "        self.tiled = False",
        ("tests/server/test_group_photo.py::test_detect_finds_the_40_pixel_faces_of_a_4000x3000_photo_within_budget",),
        alone=True,
    ),
    Break(
        "blazeface-padding-symmetric",
        "The BlazeFace ONNX graph answers as TensorFlow Lite does (scores within 1e-4).",
        "docs/performance.md, src/visage/models/tflite_convert.py",
        "src/visage/models/tflite_convert.py",
        "        return [pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2]",
        "        return [pads[0] - pads[0] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[1] // 2]",
        ("tests/models/test_blazeface.py::test_the_converted_graph_answers_as_tflite_does",),
    ),
    Break(
        "onnx-cache-unchecked",
        "A corrupted cached ONNX conversion is converted again, never used.",
        "src/visage/models/onnx_convert.py",
        "src/visage/models/onnx_convert.py",
        '        if file_sha256(path) == digest.read_text("ascii").strip():',
        "        if True:",
        ("tests/models/test_weights.py::test_a_corrupted_cached_conversion_is_converted_again",),
    ),
    Break(
        "int8-cache-unchecked",
        "A cached INT8 model corrupted after its check is quantized again, never used.",
        "src/visage/models/int8.py",
        "src/visage/models/int8.py",
        "    if check is not None and check.model_sha256 != digest:\n",
        "    if False:\n",
        ("tests/models/test_onnx_equivalence.py::test_a_corrupted_cached_int8_model_is_quantized_again",),
    ),
    Break(
        "model-downloaded",
        "Nothing is downloaded at run time.",
        "README.md, src/visage/models/weights.py",
        "src/visage/models/weights.py",
        "from functools import cache\n",
        "from functools import cache\nfrom urllib.request import urlopen  # noqa: F401\n",
        ("tests/test_static_promises.py::test_nothing_is_downloaded_at_run_time",),
    ),
    Break(
        "demographics-inferred",
        "Visage never infers race, gender, age or emotion.",
        "README.md",
        "src/visage/server/schemas.py",
        "    distance: float\n    same: bool\n    template_id: int\n",
        "    distance: float\n    same: bool\n    template_id: int\n    estimated_age: float | None = None\n",
        ("tests/test_static_promises.py::test_no_code_names_race_gender_age_or_emotion",),
    ),
    Break(
        "audit-unanchored",
        "The audit log's tail cannot be cut unseen: checkpoints are signed outside the database.",
        "docs/gallery.md",
        "src/visage/store/engine.py",
        "        anchor.attach(engine, anchor.AuditAnchor.open(anchors_path))",
        "        pass",
        ("tests/gallery/test_anchor.py::test_cut_tail_is_named_with_the_checkpoint_that_proves_it",),
    ),
    Break(
        "quality-gate-blind-to-blur",
        "Enrollment refuses a poor photo and says why (blur among the seven reasons).",
        "DESIGN.md, docs/gallery.md",
        "src/visage/quality.py",
        "    if sharpness < policy.min_sharpness:",
        "    if False:",
        ("tests/test_quality.py", "tests/server/test_enroll_refusals.py"),
    ),
    Break(
        "body-read-before-refusal",
        "A body declared over the size limit is refused before it is read.",
        "docs/server.md",
        "src/visage/server/limits.py",
        "        if declared is not None and declared > self.limit:",
        "        if False:",
        ("tests/server/test_hostile.py::test_a_100_mb_body_is_refused_before_it_is_read",),
        alone=True,
    ),
    Break(
        "grouping-fixed-threshold",
        "Grouping's edge threshold follows the number of faces, so large sets do not merge people.",
        "docs/accuracy.md, src/visage/grouping.py",
        "src/visage/api.py",
        "edge_threshold(len(vectors), model_id).threshold",
        "0.3764",
        ("tests/test_grouping.py::test_the_size_aware_rule_groups_the_shared_photos",),
    ),
    Break(
        "grouping-hubs-kept",
        "Grouping prunes the edges of faces close to everyone: the shared people/ and distractors/ "
        "faces group at F >= 0.98 (all 3,877 shared faces at F >= 0.95, in the suite).",
        "docs/accuracy.md, src/visage/grouping.py",
        "src/visage/grouping.py",
        "HUB_WEIGHT = 1.0\n",
        "HUB_WEIGHT = 0.0\n",
        ("tests/test_grouping.py::test_the_size_aware_rule_groups_the_shared_photos",),
    ),
    Break(
        "grouping-kept",
        "Grouping keeps nothing: no embedding or photo of a grouped face reaches the store.",
        "docs/accuracy.md, src/visage/server/routes/group.py",
        "src/visage/server/routes/group.py",
        "        messy=len(found.messy),\n",
        "        messy=batch.vectors[: len(found.messy) + 1].tolist(),\n",
        ("tests/server/test_photos.py::test_grouping_keeps_nothing",),
    ),
    Break(
        "milvus-erasure-unlocked",
        "An erasure's Milvus step waits for another server's rebuild, so no erased vector is put back.",
        "docs/gallery.md, src/visage/gallery/index_cache.py",
        "src/visage/gallery/index_cache.py",
        "            with self._exclusive(coll_id):\n                before = shared.version()",
        "            if True:\n                before = shared.version()",
        ("tests/gallery/test_milvus.py::test_an_erasure_waits_for_another_servers_rebuild_that_read_the_vector",),
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
    Break(
        "audit-filters-unindexed",
        "A since/until window of the audit log is read off an index, not by walking the log.",
        "docs/gallery.md, docs/server.md",
        "src/visage/store/migrations/versions/0008_audit_filter_indexes.py",
        '    op.create_index("ix_audit_event_at", "audit_event", ["at"])\n',
        "",
        ("tests/gallery/test_audit.py::test_time_and_actor_pages_read_their_index_not_the_whole_log",),
    ),
    Break(
        "audit-page-waits-for-chain",
        "The console's audit page shows its events and filters before the chain's walk answers.",
        "docs/console.md",
        "src/visage/server/console/console.js",
        "  const events = list.items;",
        "  await verifyChain();\n  const events = list.items;",
        ("tests/server/test_console.py::test_the_audit_page_is_usable_while_the_chain_is_walked",),
        alone=True,
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


def _run_tests(root: Path, tests: tuple[str, ...], *, echo: bool = False) -> tuple[int, float, str]:
    """Run ``tests`` on the copy at ``root``: exit code, seconds, last line (all output if ``echo``
    and they failed)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    # The copy runs elsewhere: a relative photo folder (make's ../shared/faces) must not move with it.
    faces = Path(os.environ.get("VISAGE_FACES") or REPO.parent / "shared" / "faces")
    env["VISAGE_FACES"] = str(faces.resolve())
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         f"--basetemp={root.parent / (root.name + '.tmp')}", *tests],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    tail = (done.stdout + done.stderr).strip().splitlines()
    if echo and done.returncode != 0:
        print("\n".join(tail[-80:]))
    return done.returncode, time.monotonic() - start, tail[-1] if tail else ""


def _table(rows: list[tuple[Break, str, float]]) -> str:
    lines = ["| promise | made in | break | guarding tests | result |", "|---|---|---|---|---|"]
    for brk, verdict, seconds in rows:
        tests = "<br>".join(f"`{t}`" for t in brk.tests)
        lines.append(f"| {brk.promise} | {brk.made_in} | `{brk.id}` ({brk.file}) | {tests} | "
                     f"{verdict} ({seconds:.0f} s) |")  # fmt: skip
    return "\n".join(lines)


def _try(clean: Path, brk: Break) -> tuple[str, float, str]:
    """Break a fresh copy of ``clean`` and run the break's tests on it: verdict, seconds, last line."""
    root = clean.parent / brk.id
    shutil.copytree(clean, root)
    try:
        if not _apply(root, brk):
            return "STALE", 0.0, f"the text to break is not once in {brk.file}"
        code, seconds, last = _run_tests(root, brk.tests)
        return {1: "caught", 0: "MISSED"}.get(code, f"error {code}"), seconds, last
    finally:
        shutil.rmtree(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", help="break ids to run (default: all)")
    parser.add_argument("--write", type=Path, help="write the table to this markdown file")
    parser.add_argument(
        "--no-control", action="store_true",
        help="skip the unbroken run (only right just after the whole suite passed on these files)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1),
        help="breaks run at once (default: 2, or 1 on one core); an `alone` break runs by itself",
    )  # fmt: skip
    args = parser.parse_args()
    chosen = [b for b in BREAKS if not args.only or b.id in args.only]
    found: dict[str, tuple[str, float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="visage-promises-") as tmp:
        clean = Path(tmp) / "clean"
        _copy_repo(clean)
        guards = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        if not args.no_control:
            code, seconds, last = _run_tests(clean, guards, echo=True)
            print(f"unbroken: {last} ({seconds:.0f} s)")
            if code != 0:
                print("the guarding tests fail without any break: fix them first")
                return 2

        def record(brk: Break, outcome: tuple[str, float, str]) -> None:
            found[brk.id] = outcome
            verdict, seconds, last = outcome
            print(f"{brk.id:28s} {verdict:8s} {seconds:5.0f} s  {last}", flush=True)

        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            running = {pool.submit(_try, clean, b): b for b in chosen if not b.alone}
            for done in as_completed(running):
                record(running[done], done.result())
        for brk in (b for b in chosen if b.alone):
            record(brk, _try(clean, brk))
    rows = [(b, found[b.id][0], found[b.id][1]) for b in chosen]
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
