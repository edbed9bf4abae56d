"""Photos/s of ``visage embed`` on Ray against the local pool, same photos, same run; and the
inputs of the N-node projection in docs/ray.md.

    .venv/bin/python benchmarks/ray_embed.py [--photos 160] [--faces DIR]

1. The local pool (``Pipeline.embed_many(workers=cores)``, its spawn included) against Ray on
   this machine (``ray.init(num_cpus=cores)``; the first run starts Ray's workers and loads
   their models, the second is warm). Ray's own start (``ray.init``) is printed apart.
2. The same photos on ``ray.cluster_utils.Cluster``: one node of 1 CPU, then two nodes of 1 CPU
   each (warm runs): the measured 1 → 2 node scaling.
3. The per-photo costs the projection is made of: ``prepare`` and ``finish`` (embed) per photo
   in one process, and the driver's share: unpickling a result and writing it with
   :class:`visage.facetable.FaceTable` (the one writer every node's output goes through).
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_line, default_faces

from visage import bulk_ray
from visage.facetable import FaceTable
from visage.pipeline import ImageResult, Pipeline


def rate(n: int, fn: Callable[[], object]) -> float:
    """Photos/s of ``fn`` over ``n`` photos."""
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def on_ray(pipe: Pipeline, photos: list[str]) -> Callable[[], object]:
    return lambda: list(bulk_ray.embed_many(pipe.config, photos))


def per_photo_costs(pipe: Pipeline, photos: list[str]) -> dict[str, float]:
    """Milliseconds per photo of each stage, one process, models warm."""
    pipe.finish([pipe.prepare(photos[0])])  # warm-up: models load
    start = time.perf_counter()
    prepared = [pipe.prepare(p) for p in photos]
    mid = time.perf_counter()
    results = [r for i in range(0, len(prepared), 16) for r in pipe.finish(prepared[i : i + 16])]
    end = time.perf_counter()
    blobs = [pickle.dumps(r) for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        back: list[ImageResult] = [pickle.loads(b) for b in blobs]
        FaceTable(Path(tmp) / "t.parquet").write(back)
        t1 = time.perf_counter()
    n = len(photos)
    return {
        "prepare": (mid - start) * 1000 / n,
        "embed": (end - mid) * 1000 / n,
        "driver": (t1 - t0) * 1000 / n,
        "result_kb": sum(map(len, blobs)) / n / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=160)
    parser.add_argument("--faces", default=default_faces())
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    photos = sorted(str(p) for p in Path(args.faces).glob("people/*/*.jpg"))[: args.photos]
    cores = os.cpu_count() or 1
    pipe = Pipeline(detector="hog", upsample=1)
    n = len(photos)
    print(cpu_line())
    print(f"{n} photos, HOG detector, runtime {pipe.embedder.model_id}; load average "
          f"{os.getloadavg()[0]:.2f} at start")  # fmt: skip

    local = rate(n, lambda: list(pipe.embed_many(photos, workers=cores)))
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - start
    cold = rate(n, on_ray(pipe, photos))
    warm = rate(n, on_ray(pipe, photos))
    ray.shutdown()
    print(f"local pool, {cores} workers (spawn included): {local:6.2f} photos/s")
    print(
        f"ray, 1 node x {cores} CPUs, first run:           {cold:6.2f} photos/s "
        f"({cold / local:.2f}x the local pool)"
    )
    print(
        f"ray, 1 node x {cores} CPUs, warm:                {warm:6.2f} photos/s "
        f"({warm / local:.2f}x the local pool)"
    )
    print(f"ray.init (starting Ray on this machine):  {init_s:6.2f} s, once per command")

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    ray.init(address=cluster.address, log_to_driver=False)
    rate(n, on_ray(pipe, photos))
    one = rate(n, on_ray(pipe, photos))
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    rate(n, on_ray(pipe, photos))
    two = rate(n, on_ray(pipe, photos))
    ray.shutdown()
    cluster.shutdown()
    print(f"cluster, 1 node x 1 CPU, warm:   {one:6.2f} photos/s")
    print(f"cluster, 2 nodes x 1 CPU, warm:  {two:6.2f} photos/s ({two / one:.2f}x one node)")

    costs = per_photo_costs(pipe, photos)
    print(
        f"per photo, one process: prepare {costs['prepare']:.1f} ms, embed "
        f"{costs['embed']:.1f} ms; driver (unpickle + FaceTable) {costs['driver']:.2f} ms "
        f"= {1000 / costs['driver']:.0f} photos/s ceiling; result {costs['result_kb']:.1f} KiB"
    )


if __name__ == "__main__":
    main()
