"""Bulk embedding on a Ray cluster (Ray Data): another scheduler over the same per-photo work.

The local pool runs :meth:`Pipeline.prepare` then :meth:`Pipeline.finish` in one process per
chunk; here the two run on different workers of a Ray Data stream:

    paths → prepare tasks (read bytes, decode, detect, align; CPU, 0.75 CPU each)
          → embed actors (one Pipeline, so one ONNX session, per actor; a GPU each when the
            cluster has GPUs, the CUDA provider then chosen by the session)
          → the driver, which hands each :class:`ImageResult` to the caller (``visage embed``
            writes them with the same :class:`visage.facetable.FaceTable`: same table, same
            resume rule, same checkpoints).

A bad file is an error result, not a failed task, so the run goes on. A task or actor lost with
its node is re-run by Ray (lineage and actor restarts); a photo whose result already reached
the driver is never handed on twice (:func:`embed_many` keeps the set of sources seen).

Ray is an optional extra: nothing imports it unless ``--ray`` is given (:func:`require_ray`).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import InputError
from .pipeline import ImageResult, Pipeline, PipelineConfig

EXTRA = "pip install 'visage[ray]'"

PATHS_PER_TASK = 8
"""Photos per prepare task: ~0.1-0.4 s of HOG work on this machine, so Ray's ~1-2 ms per task
stays under 2% while 40 photos still make 5 tasks to spread over two nodes."""

EMBED_BATCH = 16
"""Photos per embed call (one batched ONNX run over all their chips), as the local chunk."""

PREPARE_CPUS = 0.75
EMBED_CPUS = 0.25
"""Logical CPUs reserved per prepare task and per CPU embed actor: on a 2-core node two
prepare tasks and one embed actor fit at once (1.5 + 0.25 <= 2). Embedding is ~10% of a
photo's cost with HOG, so a whole CPU held by the actor would idle half the node."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`InputError` naming the extra to install."""
    try:
        import ray
        import ray.data  # Ray Data ships in ray[data]
    except ImportError:
        raise InputError(f"--ray needs Ray Data, an optional extra: {EXTRA}") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at ``address`` (``auto``, ``host:6379``, ``ray://host:10001``), or
    start Ray on this machine when ``None`` (``RAY_ADDRESS`` is honoured, as Ray does).
    Reuses a connection this process already holds."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address or None,
                log_to_driver=False,
                logging_level="ERROR",
                include_dashboard=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI draws its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-run INFO lines on stderr
    return ray


_pipelines: dict[int, tuple[PipelineConfig, Pipeline]] = {}


def _pipeline(config: PipelineConfig) -> Pipeline:
    """One pipeline per worker process (models load once, as in the local pool's initializer),
    rebuilt only if a task brings a different configuration."""
    held = _pipelines.get(0)
    if held is None or held[0] != config:
        held = (config, Pipeline.from_config(config))
        _pipelines[0] = held
    return held[1]


def _prepare(batch: pa.Table, config: PipelineConfig) -> pa.Table:
    """Ray task: :meth:`Pipeline.prepare` for each path of the batch, pickled for the next stage."""
    pipe = _pipeline(config)
    items = [pickle.dumps(pipe.prepare(src)) for src in batch.column("source").to_pylist()]
    return pa.table({"item": pa.array(items, pa.binary())})


class _EmbedActor:
    """Ray actor: one pipeline (one ONNX session) embedding batches with :meth:`Pipeline.finish`."""

    def __init__(self, config: PipelineConfig) -> None:
        self.pipe = Pipeline.from_config(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [pickle.loads(b) for b in batch.column("item").to_pylist()]
        results = [pickle.dumps(r) for r in self.pipe.finish(items)]
        return pa.table({"result": pa.array(results, pa.binary())})


def embed_many(
    config: PipelineConfig,
    sources: Iterable[str | Path],
    *,
    address: str | None = None,
    progress: Callable[[ImageResult], None] | None = None,
) -> Iterator[ImageResult]:
    """Embed ``sources`` on Ray; yields one :class:`ImageResult` per source, in the order they
    finish (the table does not care), each source once. ``progress`` is called per result."""
    paths = [str(s) for s in sources]
    if not paths:
        return
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    config = replace(config, threads=config.threads or 1)  # one runtime thread per task/actor
    blocks = math.ceil(len(paths) / PATHS_PER_TASK)
    ds = ray.data.from_items([{"source": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(
        _prepare,
        fn_kwargs={"config": config},
        batch_size=PATHS_PER_TASK,
        batch_format="pyarrow",
        num_cpus=PREPARE_CPUS,
    )
    placement: dict[str, float] = (
        {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": EMBED_CPUS}
    )
    ds = ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"config": config},
        batch_size=EMBED_BATCH,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=gpus or nodes),
        **placement,
    )
    seen: set[str] = set()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in batch.column("result").to_pylist():
            result: ImageResult = pickle.loads(blob)
            if result.source in seen:  # a re-run task's output that already reached us
                continue
            seen.add(result.source)
            if progress is not None:
                progress(result)
            yield result
