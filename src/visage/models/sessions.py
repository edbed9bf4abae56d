"""onnxruntime sessions, made one way for every converted model (embedder, INT8 embedder, MMOD)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelError


def onnx_available() -> bool:
    """True when onnxruntime can be imported (the pipeline's cue to prefer this runtime)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def make_session(path: Path, *, threads: int | None = None) -> Any:
    """An onnxruntime session for ``path``: all graph optimisations, one intra-op thread per
    core (``threads`` overrides), CUDA first when this onnxruntime build has it."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # Idle worker threads must sleep, not spin: the pipeline runs dlib (HOG, landmarks) between
    # inference calls, and spinning threads stole half the CPU from it (HOG + embed per photo:
    # 159 ms spinning vs 60 ms not, on 2 cores; batch-32 throughput unchanged).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc
