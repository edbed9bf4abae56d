"""A small reader for TensorFlow Lite model files: the graph and weights, without TensorFlow.

A ``.tflite`` file is a FlatBuffer of the schema in TensorFlow's ``lite/schema/schema.fbs``.
This reads only what a float inference graph needs — tensors (shape, type, constant data),
operators (builtin code, inputs, outputs, options) and the subgraph's inputs and outputs — for
:mod:`.blazeface` to convert MediaPipe's BlazeFace detectors to ONNX. Field numbers below are
the schema's; a file using anything else (custom ops, quantized tensors) is refused with a
:class:`~visage.errors.ModelError` naming what it met, never read half-way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

BUILTIN_OPS = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    17: "MAX_POOL_2D",
    19: "RELU",
    22: "RESHAPE",
    23: "RESIZE_BILINEAR",
    34: "PAD",
    54: "PRELU",
}
"""The builtin operators the reader knows (schema ``BuiltinOperator``), by code."""

TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
"""Schema ``TensorType`` codes of the tensors a float graph uses."""

# Option fields per operator, in schema order: (name, struct format) — "b" bytes, "i" ints.
_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "CONV_2D": (
        ("padding", "b"), ("stride_w", "i"), ("stride_h", "i"), ("activation", "b"),
        ("dilation_w", "i"), ("dilation_h", "i"),
    ),
    "DEPTHWISE_CONV_2D": (
        ("padding", "b"), ("stride_w", "i"), ("stride_h", "i"), ("depth_multiplier", "i"),
        ("activation", "b"), ("dilation_w", "i"), ("dilation_h", "i"),
    ),
    "MAX_POOL_2D": (
        ("padding", "b"), ("stride_w", "i"), ("stride_h", "i"), ("filter_w", "i"),
        ("filter_h", "i"), ("activation", "b"),
    ),
    "ADD": (("activation", "b"),),
    "RESIZE_BILINEAR": (("new_height", "i"), ("new_width", "i"), ("align_corners", "b"),
                        ("half_pixel_centers", "b")),
    "CONCATENATION": (("axis", "i"), ("activation", "b")),
}  # fmt: skip
_DEFAULTS = {"dilation_w": 1, "dilation_h": 1, "depth_multiplier": 1}


@dataclass(frozen=True)
class Tensor:
    """One tensor: ``shape`` (NHWC for images), numpy ``dtype``, constant ``data`` or None."""

    name: str
    shape: tuple[int, ...]
    dtype: type
    data: npt.NDArray[np.generic] | None


@dataclass(frozen=True)
class Operator:
    """One builtin operator: its name (``CONV_2D``), tensor indices, and parsed options."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TfliteGraph:
    """The first subgraph of a model: tensors, operators in execution order, inputs, outputs."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class _Reader:
    """FlatBuffer table access: a table is a position; fields are found through its vtable."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def u32(self, pos: int) -> int:
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def field(self, table: int, index: int) -> int:
        """Absolute position of field ``index`` of ``table``, 0 when the field is absent."""
        vtable = table - struct.unpack_from("<i", self.buf, table)[0]
        vt_size = struct.unpack_from("<H", self.buf, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vt_size:
            return 0
        off = struct.unpack_from("<H", self.buf, vtable + slot)[0]
        return table + off if off else 0

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return int(struct.unpack_from("<" + fmt, self.buf, pos)[0]) if pos else default

    def ref(self, table: int, index: int) -> int:
        """The table, vector or string an offset field points to (0 when absent)."""
        pos = self.field(table, index)
        return pos + self.u32(pos) if pos else 0

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """``(start, length)`` of a vector field; ``(0, 0)`` when absent."""
        pos = self.ref(table, index)
        return (pos + 4, self.u32(pos)) if pos else (0, 0)

    def ints(self, table: int, index: int) -> tuple[int, ...]:
        start, n = self.vector(table, index)
        return tuple(struct.unpack_from(f"<{n}i", self.buf, start)) if n else ()

    def tables(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(n)]

    def string(self, table: int, index: int) -> str:
        pos = self.ref(table, index)
        return self.buf[pos + 4 : pos + 4 + self.u32(pos)].decode("utf-8") if pos else ""

    def raw(self, table: int, index: int) -> bytes:
        start, n = self.vector(table, index)
        return self.buf[start : start + n]


def _options(r: _Reader, table: int, op: str) -> dict[str, int]:
    spec = _OPTIONS.get(op, ())
    opts = r.ref(table, 4)  # builtin_options (a union value: the options table)
    if not opts:
        return {name: _DEFAULTS.get(name, 0) for name, _ in spec}
    return {
        name: r.scalar(opts, i, fmt, _DEFAULTS.get(name, 0)) for i, (name, fmt) in enumerate(spec)
    }


def read_tflite(data: bytes) -> TfliteGraph:
    """Parse a ``.tflite`` model's first subgraph. Raises ModelError for anything unsupported."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError("not a TensorFlow Lite model (no TFL3 identifier)")
    r = _Reader(data)
    try:
        model = r.u32(0)
        buffers = [r.raw(b, 0) for b in r.tables(model, 4)]
        codes = []
        for oc in r.tables(model, 1):
            # builtin_code (field 3, int32) supersedes deprecated_builtin_code (field 0, int8).
            code = max(r.scalar(oc, 0, "b"), r.scalar(oc, 3, "i"))
            if code not in BUILTIN_OPS:
                raise ModelError(f"unsupported TFLite operator code {code}")
            codes.append(BUILTIN_OPS[code])
        subgraphs = r.tables(model, 2)
        if not subgraphs:
            raise ModelError("the TFLite model has no subgraph")
        sub = subgraphs[0]
        tensors = []
        for t in r.tables(sub, 0):
            type_code = r.scalar(t, 1, "b")
            quant = r.ref(t, 4)  # QuantizationParameters; a float graph has no scales in it
            if type_code not in TENSOR_TYPES or (quant and r.vector(quant, 2)[1]):
                raise ModelError(f"unsupported TFLite tensor {r.string(t, 3)!r} (type {type_code})")
            dtype = TENSOR_TYPES[type_code]
            shape = r.ints(t, 0)
            raw = buffers[r.scalar(t, 2, "I")]
            const = np.frombuffer(raw, dtype=dtype).reshape(shape).copy() if raw else None
            tensors.append(Tensor(r.string(t, 3), shape, dtype, const))
        operators = []
        for o in r.tables(sub, 3):
            op = codes[r.scalar(o, 0, "I")]
            operators.append(Operator(op, r.ints(o, 1), r.ints(o, 2), _options(r, o, op)))
        return TfliteGraph(tuple(tensors), tuple(operators), r.ints(sub, 1), r.ints(sub, 2))
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"malformed TensorFlow Lite model: {exc}") from exc
