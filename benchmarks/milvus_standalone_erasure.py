"""How long a Milvus standalone server keeps an erased template in its files.

    python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install milvus==2.3.5
    PYTHONPATH=src .venv/bin/python benchmarks/milvus_standalone_erasure.py \
        --server /tmp/mvenv/bin/milvus-server [--minutes 6] [--config KEY=VALUE ...]

PyPI's ``milvus`` package is an embedded Milvus *standalone* server (etcd, rocksmq as its
message log, local object storage), not Milvus Lite. This enrolls 1,000 seeded 128-d templates
through :class:`MilvusIndex` (``milvus:<uri>`` as the gallery uses it), erases one id as a
person's deletion does (the partition rewrite), and then greps every file of the server's data
folder every 5 s for the erased vector's 512 bytes, printing which kinds of file (segment
``insert_log``, ``rocksmq`` message log, other) still hold it and when each stopped;
``--traffic N`` adds N vectors to another collection every 5 s meanwhile, as a live server would.
The garbage collector's defaults are hours; ``--config`` passes ``--extra-config`` values
(defaults below lower its interval and tolerances to seconds and rocksmq's retention to 1 min).
The server binds fixed ports (etcd 2379, 9091, ...): run it on a machine with none of them used.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from machine import cpu_line

from visage.decision import normalize
from visage.gallery.milvus import MilvusIndex, milvus_client

DEFAULT_CONFIG = (
    "dataCoord.gc.interval=1",
    "dataCoord.gc.dropTolerance=1",
    "dataCoord.gc.missingTolerance=1",
    "rocksmq.retentionTimeInMinutes=1",
    "rocksmq.compactionInterval=10",
)


def kind(path: Path) -> str:
    """The part of Milvus a data file belongs to, from its path."""
    parts = str(path)
    for name in ("insert_log", "delta_log", "stats_log", "index_files", "rocksmq", "etcd"):
        if name in parts:
            return name
    return "other"


def holders(folder: Path, blob: bytes) -> Counter[str]:
    """Kind of file -> how many files under ``folder`` hold ``blob``."""
    found: Counter[str] = Counter()
    for path in folder.rglob("*"):
        try:
            if path.is_file() and blob in path.read_bytes():
                found[kind(path)] += 1
        except OSError:  # the server removed it between the listing and the read
            continue
    return found


def wait_for(port: int, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    """Until a pymilvus client connects to the proxy, or fail with the server's exit."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            milvus_client(f"http://127.0.0.1:{port}").list_collections()
            return
        except Exception:  # noqa: BLE001 - pymilvus raises several kinds while it starts
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"milvus-server did not start (exit {server.poll()})") from None
            time.sleep(2)


def stop_milvus_binary(data: Path) -> None:
    """Terminate the ``milvus`` binary the wrapper ran from ``data``/bin: it leaves the
    wrapper's process group, so stopping the wrapper leaves it running on the fixed ports."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(str(data / "bin" / "milvus").encode() + b"\0"):
                os.kill(int(cmdline.parent.name), signal.SIGTERM)
        except OSError:  # gone meanwhile
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="milvus-server", help="the milvus-server command")
    parser.add_argument("--port", type=int, default=19600)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--config", nargs="*", default=list(DEFAULT_CONFIG))
    parser.add_argument(
        "--traffic",
        type=int,
        default=0,
        help="vectors added to another collection every 5 s after the erasure",
    )
    args = parser.parse_args()
    print(cpu_line())
    data = Path(tempfile.mkdtemp(prefix="milvus-standalone-"))
    extra = [arg for value in args.config for arg in ("--extra-config", value)]
    log = (data.parent / f"{data.name}.log").open("wb")
    # the server's own Python must not see this checkout: benchmarks/milvus.py shadows it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [args.server, "--data", str(data), "--proxy-port", str(args.port), *extra]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(args.port, server)
        uri = f"http://127.0.0.1:{args.port}"
        index = MilvusIndex(milvus_client(uri), uri, coll_id=1, dim=128)
        rng = np.random.default_rng(7)
        vectors = normalize(rng.standard_normal((1000, 128)).astype(np.float32))
        ids = np.arange(1, 1001, dtype=np.int64)
        t0 = time.monotonic()
        index.rebuild(ids, vectors, version=1, large=False)
        print(f"rebuild 1,000 vectors: {time.monotonic() - t0:.1f} s")
        time.sleep(15)  # let the data node flush the segment to its insert_log
        victim = vectors[500].astype("<f4").tobytes()
        print(f"before erasure: {dict(holders(data, victim))}")
        t0 = time.monotonic()
        assert index.remove(np.array([501], dtype=np.int64)) == 1
        print(f"remove (partition rewrite): {time.monotonic() - t0:.1f} s")
        assert int(index.search(vectors[500:501], 1)[1][0][0]) != 501
        other = MilvusIndex(milvus_client(uri), uri, coll_id=2, dim=128)
        if args.traffic:
            other.rebuild(ids[:1], vectors[:1], version=1, large=False)
        t0, seen, added = time.monotonic(), None, 0
        while time.monotonic() - t0 < args.minutes * 60:
            now = dict(holders(data, victim))
            if now != seen:
                print(f"  {time.monotonic() - t0:6.0f} s after erasure: {now or 'no file'}")
                seen = now
            if not now:
                break
            if args.traffic:
                fresh = normalize(rng.standard_normal((args.traffic, 128)).astype(np.float32))
                other.add(np.arange(added, added + args.traffic, dtype=np.int64) + 10**6, fresh)
                added += args.traffic
            time.sleep(5)
    finally:
        server.terminate()
        server.wait(timeout=60)
        stop_milvus_binary(data)


if __name__ == "__main__":
    main()
