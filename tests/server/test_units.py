"""The server's parts without a server: settings precedence, keys, the rate limiter, grouping,
the last evaluation report's file."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from visage.cli import app
from visage.errors import InputError, NotFound, StorageError
from visage.gallery import Gallery
from visage.grouping import group
from visage.server.auth import FailureLimit, RateLimiter
from visage.server.evaluation import REPORT_FILE, LastReport, Report, report_folder
from visage.server.keys_store import ApiKey, KeyStore, Scope
from visage.server.problems import RateLimited, Unauthorized
from visage.server.settings import load_settings
from visage.store import Store, database_url, open_engine, utcnow


def test_settings_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "visage.toml"
    config.write_text("port = 9001\nmax_faces = 7\nrate_limit = 3.5\n")
    monkeypatch.setenv("VISAGE_CONFIG", str(config))
    monkeypatch.setenv("VISAGE_MAX_FACES", "9")
    settings = load_settings(rate_limit=None, port=9002)
    assert (settings.port, settings.max_faces, settings.rate_limit, settings.host) == (
        9002,
        9,
        3.5,
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("port = 0\n", "port"),
        ("colour = 'red'\n", "colour"),
        ("index = 'annoy'\n", "index"),
        ("port = [\n", "TOML"),
        ("eval_scratch = '/no/such/folder'\n", "eval_scratch: .* is not a folder"),
        ("eval_reports = '/dev/null'\n", "eval_reports: .* is not a folder"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path: Path, text: str, word: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(InputError, match=word):
        load_settings(config=config)


def test_the_last_report_is_one_private_file_that_every_process_reads(tmp_path: Path) -> None:
    """Two :class:`LastReport` on one folder stand for two worker processes: what one keeps the
    other answers, the latest either wrote; a file that is not a report is a StorageError."""
    folder = report_folder(database_url(tmp_path / "g.db"))
    assert folder == tmp_path / "g.db.eval"
    assert report_folder("postgresql://db.example/visage") is None
    assert report_folder("postgresql://db.example/visage", tmp_path / "r") == tmp_path / "r"
    one, other = LastReport(folder), LastReport(folder)
    assert one.get() is None
    now = datetime.now(UTC)
    first = Report("verify", {"accuracy": {"mean": 0.9}}, {"roc": b"\x89PNG 1"}, now, "vk_a")
    one.set(first, 7)
    assert other.get() == (first, 7)
    second = Report("identify", {"rank1": 1.0, "cmc": [1.0]}, {"cmc": b"\x89PNG 2"}, now, "vk_b")
    other.set(second, 8)
    assert one.get() == (second, 8) == other.get()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / REPORT_FILE).stat().st_mode) == 0o600
    assert list(folder.iterdir()) == [folder / REPORT_FILE]
    (folder / REPORT_FILE).write_text("{not json")
    with pytest.raises(StorageError, match="not a report"):
        one.get()
    memory = LastReport()
    memory.set(first, 1)
    assert memory.get() == (first, 1) and not list(tmp_path.glob("*.eval/*.tmp"))


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    engine = open_engine(database_url(tmp_path / "g.db"))
    store = KeyStore(Store(engine))
    new = store.create("door", scopes=["identify"], collections=["lobby"], actor="test")
    assert new.token.startswith(new.key.id + ".")
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT token_sha256 FROM api_key").scalar_one()
    assert new.token.split(".")[1] not in stored and len(stored) == 64
    key = store.authenticate(new.token)
    assert key is not None and key.allows(Scope.IDENTIFY) and not key.allows(Scope.ENROLL)
    assert key.sees("lobby") and not key.sees("vault")
    for wrong in (new.token[:-1] + ("A" if new.token[-1] != "A" else "B"), "garbage"):
        with pytest.raises(Unauthorized, match="unknown, malformed or revoked"):
            store.authenticate(wrong)
    store.revoke(new.key.id, actor="test")
    with pytest.raises(Unauthorized, match="unknown, malformed or revoked"):
        store.authenticate(new.token)
    assert store.active_count() == 0
    with pytest.raises(NotFound):
        store.revoke("vk_000000000000")
    with pytest.raises(InputError, match="scope"):
        store.create("x", scopes=["superuser"])
    events = Gallery(database_url(tmp_path / "g.db"), index="exact").audit_events()
    assert [(e.action, e.actor) for e in events] == [("key.create", "test"), ("key.revoke", "test")]


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    key = ApiKey(
        id="vk_1",
        name="t",
        scopes=frozenset({Scope.IDENTIFY}),
        collections=None,
        rate_limit=None,
        created_at=utcnow(),
        revoked_at=None,
    )
    for _ in range(3):
        limiter.spend(key)
    with pytest.raises(RateLimited) as refused:
        limiter.spend(key)
    assert refused.value.retry_after == pytest.approx(0.5)
    now[0] = 0.5
    limiter.spend(key)
    limiter.spend(replace(key, rate_limit=0.0))  # a key's own rate of 0: unlimited


def test_a_keys_own_rate_is_its_burst_and_failures_are_limited_per_client() -> None:
    now = [0.0]
    key = ApiKey(
        id="vk_2", name="t", scopes=frozenset({Scope.IDENTIFY}), collections=None,
        rate_limit=2.0, created_at=utcnow(), revoked_at=None,
    )  # fmt: skip
    limiter = RateLimiter(rate=50.0, burst=100, clock=lambda: now[0])
    limiter.spend(key)
    limiter.spend(key)
    with pytest.raises(RateLimited):  # not the server's burst of 100
        limiter.spend(key)

    failures = FailureLimit(3, clock=lambda: now[0])
    assert failures.admit("10.0.0.1", "good")  # the control: a good token is looked up
    failures.served("10.0.0.1", "good", spent=True)
    for _ in range(3):
        assert failures.admit("10.0.0.1", "guess")
    with pytest.raises(RateLimited, match="from 10.0.0.1") as refused:
        failures.admit("10.0.0.1", "guess")
    assert refused.value.retry_after == pytest.approx(20.0)  # 3 a minute: one every 20 s
    assert failures.admit("10.0.0.1", "good") is False  # served before: still looked up
    assert failures.admit("10.0.0.2", "guess")  # another address
    now[0] = 20.0
    assert failures.admit("10.0.0.1", "other")


def test_grouping_separates_people_and_leaves_strangers_messy() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 128)).astype(np.float32)
    faces = [c + 0.05 * rng.standard_normal((5, 128)).astype(np.float32) for c in centres]
    strangers = rng.standard_normal((4, 128)).astype(np.float32)
    vectors = np.concatenate([*faces, strangers])
    result = group(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), threshold=0.6)
    assert result.groups == [list(range(5)), list(range(5, 10)), list(range(10, 15))]
    assert result.messy == [15, 16, 17, 18]
    assert group(np.empty((0, 128), np.float32), 0.6).groups == []


def test_keys_commands_create_list_and_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--scopes",
            "identify,enroll",
            "--collections",
            "lobby,vault",
            "--name",
            "door",
            "--db",
            db,
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["token"].startswith(record["id"] + ".")
    assert (record["scopes"], record["collections"]) == (["enroll", "identify"], ["lobby", "vault"])
    listed = json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).stdout)
    assert [k["id"] for k in listed] == [record["id"]] and "token" not in listed[0]
    assert runner.invoke(app, ["keys", "revoke", record["id"], "--db", db]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).stdout)
    assert listed[0]["revoked_at"] is not None
    refused = runner.invoke(app, ["keys", "create", "--scopes", "root", "--db", db])
    assert refused.exit_code == 1 and "unknown scope 'root'" in refused.output


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--db", str(tmp_path / "g.db")])
    assert result.exit_code == 1
    assert "invalid settings: port" in result.output and "Traceback" not in result.output


def test_a_server_process_gives_numpy_one_blas_thread_and_leaves_faiss_its_own() -> None:
    """Run in a fresh interpreter: the limit is process-wide, and this one runs other tests."""
    script = (
        "import json, faiss, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from visage.server.services import numpy_blas_one_thread\n"
        "before = {i['filepath']: i['num_threads'] for i in threadpool_info()}\n"
        "limited = numpy_blas_one_thread()\n"
        "after = {i['filepath']: i['num_threads'] for i in threadpool_info()}\n"
        "print(json.dumps({'limited': limited, 'before': before, 'after': after}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    seen = json.loads(done.stdout)
    assert seen["limited"] == 1
    numpy_blas = [p for p in seen["after"] if "numpy" in p and "openblas" in p]
    assert len(numpy_blas) == 1 and seen["after"][numpy_blas[0]] == 1
    for path, threads in seen["after"].items():
        if path not in numpy_blas:  # faiss's BLAS and OpenMP keep a thread per core
            assert threads == seen["before"][path], path
    assert any("faiss" in p for p in seen["after"]), "faiss's libraries were not loaded"


def test_each_server_worker_runs_the_models_on_its_share_of_the_cores(tmp_path: Path) -> None:
    """``--workers N``: each process's embedder gets cores // N threads (at least one), as the
    local pool's workers do; one worker keeps a thread per core. A fresh interpreter, as the
    services limit numpy's BLAS for the whole process."""
    script = (
        "import json, os, sys\n"
        "from visage.server.metrics import Metrics\n"
        "from visage.server.services import open_services\n"
        "from visage.server.settings import load_settings\n"
        "seen = {}\n"
        "for workers in (1, 2, 64):\n"
        "    settings = load_settings(db=f'sqlite:///{sys.argv[1]}/w{workers}.db', workers=workers)\n"
        "    services = open_services(settings, Metrics())\n"
        "    seen[workers] = services.pipeline.embedder.threads\n"
        "    services.close()\n"
        "print(json.dumps({'cores': os.cpu_count(), 'threads': seen}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, check=False, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    cores = seen["cores"]
    assert seen["threads"] == {"1": cores, "2": max(1, cores // 2), "64": 1}, seen
