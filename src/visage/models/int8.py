"""The INT8 embedder: quantized once per calibration set, checked against fp32 on *this* CPU,
and used only where the check holds.

Why the settings. onnxruntime's u8·s8 convolutions on x86 without VNNI (AVX2, AVX-512 before
VNNI) use ``vpmaddubsw``, which adds each pair of u8·s8 products into an int16 and saturates.
With 8-bit weights a descriptor moved by 0.24 (normalised L2) on an emulated Haswell where the
same model moves it by 0.09 on AVX-512 VNNI. Measured on 160 held-out chips of ``people/``
(calibrated on 64; ``docs/performance-runtime.md`` has the table and the commands):

=========================================  ==========  ===========  ===================
QDQ, per-channel weights, u8 activations   AVX2 max    VNNI max     speed vs fp32 (VNNI)
=========================================  ==========  ===========  ===================
s8 weights (before)                        0.236       0.087        2.1x
s8, 7-bit range (``reduce_range``)         0.077       0.086        2.1x
u8 weights (U8U8)                          0.081       0.087        0.8x
s8 7-bit, final matmul kept fp32 (this)    0.075       0.084        2.1x
=========================================  ==========  ===========  ===================

7-bit weights keep every pair sum within int16 (2·255·64 < 2^15), so the u8·s8 kernels of
AVX2, AVX-512 and VNNI agree, and ARM64's dot-product kernels do not saturate at all. The final
128x256 matmul is a negligible share of the work and its quantization error lands straight on
the descriptor, so it stays fp32.

The check. Every fourth calibration chip is held out of calibration; the INT8 model must keep
their descriptors within :data:`MAX_DRIFT` of fp32's on the CPU that runs it. Where it does not,
the embedder falls back to fp32 with one warning naming what the CPU lacks, and the verdict is
recorded beside the model in the cache, keyed by the CPU (``visage version`` reports it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from .onnx_convert import cache_dir, converted_model_path, file_sha256, write_atomic
from .sessions import make_session

log = logging.getLogger(__name__)

MAX_DRIFT = 0.1
"""Largest normalised-L2 move of a held-out descriptor INT8 may cause. Same-person distances
reach the 0.3764 threshold (cosine 1 - s, i.e. L2 ~0.87); a 0.1 move changes no decision on
``pairs_dev.txt`` (3-fold accuracy 97.83% for fp32 and for INT8, native VNNI and emulated
AVX2 alike, where INT8's largest move was 0.046)."""

MIN_CHIPS = 8
"""Fewest calibration chips: three of four calibrate, one of four checks (at least two)."""

INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""CPU features that decide which INT8 kernel onnxruntime runs (x86 ``flags``, ARM
``Features`` in ``/proc/cpuinfo``)."""

_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

Chips = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CpuInt8:
    """What this CPU offers INT8 inference: its model name and the :data:`INT8_FLAGS` it has."""

    model: str
    flags: tuple[str, ...]

    @property
    def dot_product(self) -> bool:
        """True with a native 8-bit dot-product instruction (VNNI, AMX, ARM ``sdot``/``i8mm``)."""
        return any(f in self.flags for f in _DOT_PRODUCT)

    @property
    def signature(self) -> str:
        """A short key for cache records: checks made on one CPU do not speak for another."""
        text = f"{self.model}|{','.join(self.flags)}|{platform.machine()}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One phrase for messages, e.g. ``AMD EPYC: avx2, no AVX-512 VNNI / AVX-VNNI``."""
        have = ", ".join(self.flags) or "no INT8 features known"
        if self.dot_product:
            return f"{self.model}: {have}"
        return f"{self.model}: {have}; no 8-bit dot product (AVX-512 VNNI / AVX-VNNI / ARM dotprod)"


def cpu_int8() -> CpuInt8:
    """This CPU, read from ``/proc/cpuinfo`` (elsewhere: the platform's name, no flags)."""
    model, found = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return CpuInt8(model, ())
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model in ("", platform.machine()):
            model = value.strip()
        elif key in ("flags", "features"):
            found.update(value.split())
    return CpuInt8(model, tuple(f for f in INT8_FLAGS if f in found))


@dataclass(frozen=True)
class Int8Check:
    """The verdict on one INT8 model on one CPU: drift of the held-out chips and whether it is
    used. Stored as JSON beside the model (``<model>.check-<cpu signature>.json``)."""

    model: str
    model_sha256: str
    in_use: bool
    drift_max: float
    drift_mean: float
    bound: float
    held_out: int
    cpu: str
    cpu_flags: tuple[str, ...]
    onnxruntime: str

    def summary(self) -> str:
        """One line for ``visage version`` and the fallback warning."""
        figures = f"held-out drift max {self.drift_max:.3f} (bound {self.bound:.3f})"
        return f"in use, {figures}" if self.in_use else f"falls back to fp32, {figures}"


def _record_path(model: Path, cpu: CpuInt8) -> Path:
    return model.with_name(f"{model.stem}.check-{cpu.signature}.json")


def _quantize(chips: Chips, path: Path) -> None:
    """Static QDQ quantization of the fp32 embedder, calibrated (MinMax) on ``chips``."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ModelError("INT8 needs onnxruntime: pip install onnxruntime") from None
    import onnx

    class _Chips(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(range(0, len(chips), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            if start is None:
                return None
            return {"chips": chips[start : start + 16].astype(np.float32)}

    source = converted_model_path("resnet")
    log.info("quantizing the embedder to INT8 on %d chips at %s", len(chips), path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # onnxruntime's recommended pre-pass (shape inference, graph clean-up) before QDQ.
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        final = [n.name for n in onnx.load(prepared).graph.node if n.op_type in ("MatMul", "Gemm")]
        quantize_static(
            prepared,
            out,
            _Chips(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=final,
        )
        write_atomic(path, out.read_bytes())


def _descriptors(path: Path, chips: Chips, threads: int | None) -> npt.NDArray[np.float64]:
    session = make_session(path, threads=threads)
    out = np.concatenate(
        [
            session.run(None, {"chips": chips[i : i + 32].astype(np.float32)})[0]
            for i in range(0, len(chips), 32)
        ]
    ).astype(np.float64)
    unit: npt.NDArray[np.float64] = out / np.linalg.norm(out, axis=1, keepdims=True)
    return unit


def checked_int8_model(
    chips: Chips, *, max_drift: float = MAX_DRIFT, threads: int | None = None
) -> Int8Check:
    """Build (once, cached by the chips' sha256) and check (once per CPU) the INT8 embedder.

    ``chips`` ``(n,150,150,3) uint8``, n >= :data:`MIN_CHIPS`: every fourth is held out of
    calibration and checked. A model whose held-out drift exceeds ``max_drift`` is not used:
    the caller gets ``in_use=False`` and one warning is logged naming the CPU's INT8 features.
    """
    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    if chips.ndim != 4 or chips.shape[1:] != (150, 150, 3):
        raise ValueError(f"calibration chips must be (n,150,150,3) uint8, not {chips.shape}")
    if len(chips) < MIN_CHIPS:
        raise ValueError(
            f"INT8 needs at least {MIN_CHIPS} calibration chips (three of four calibrate it, "
            f"one of four checks it), not {len(chips)}"
        )
    if not 0 < max_drift <= 2:
        raise ValueError(f"max_drift must be in (0, 2], not {max_drift}")
    held = np.arange(len(chips)) % 4 == 3
    source = converted_model_path("resnet")
    key = hashlib.sha256(chips.tobytes()).hexdigest()[:16]
    path = source.with_name(f"{source.stem}-int8r-{key}.onnx")
    if not path.is_file():
        _quantize(chips[~held], path)
    cpu = cpu_int8()
    record = _record_path(path, cpu)
    check = _read_check(record)
    digest = file_sha256(path)
    if check is not None and check.model_sha256 != digest:
        # The check spoke for other bytes: a model corrupted in the cache would otherwise run
        # on the strength of a verdict on the model it was.
        log.warning("cached INT8 model %s does not match its check: quantizing it again", path)
        _quantize(chips[~held], path)
        digest, check = file_sha256(path), None
    if check is None or check.bound != max_drift:
        check = _check(path, digest, source, chips[held], cpu, max_drift, threads)
        write_atomic(record, json.dumps(asdict(check), indent=2).encode())
    if not check.in_use:
        log.warning(
            "INT8 embedder not used on this CPU (%s): %s; embedding with fp32",
            cpu.describe(),
            check.summary(),
        )
    return check


def _check(
    path: Path,
    digest: str,
    source: Path,
    held: Chips,
    cpu: CpuInt8,
    bound: float,
    threads: int | None,
) -> Int8Check:
    import onnxruntime

    moved = np.linalg.norm(
        _descriptors(path, held, threads) - _descriptors(source, held, threads), axis=1
    )
    return Int8Check(
        model=path.name,
        model_sha256=digest,
        in_use=bool(moved.max() <= bound),
        drift_max=round(float(moved.max()), 4),
        drift_mean=round(float(moved.mean()), 4),
        bound=bound,
        held_out=len(held),
        cpu=cpu.model,
        cpu_flags=cpu.flags,
        onnxruntime=str(onnxruntime.__version__),
    )


def _read_check(record: Path) -> Int8Check | None:
    try:
        data = json.loads(record.read_text())
        return Int8Check(**{**data, "cpu_flags": tuple(data["cpu_flags"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None  # absent or unreadable: check again


def int8_status() -> dict[str, object]:
    """This CPU's INT8 features and the newest INT8 check recorded for it in the model cache."""
    cpu = cpu_int8()
    records = sorted(
        cache_dir().glob(f"*-int8r-*.check-{cpu.signature}.json"),
        key=lambda p: p.stat().st_mtime,
    )
    check = _read_check(records[-1]) if records else None
    return {
        "cpu": cpu.model,
        "cpu_flags": list(cpu.flags),
        "dot_product": cpu.dot_product,
        "status": check.summary() if check else "not built yet on this machine",
        "check": asdict(check) if check else None,
    }
