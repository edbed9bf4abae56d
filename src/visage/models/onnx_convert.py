"""Convert dlib's CC0 networks to ONNX graphs, deterministically, and cache the result.

Two networks from ``face_recognition_models`` are converted, written here in numpy + ``onnx``
from dlib's own definitions (``tools/python/src/face_recognition.cpp`` and
``cnn_face_detector.cpp`` in the dlib sources):

``resnet``
    The ResNet-29 embedder. Graph input ``chips``: ``(n, 150, 150, 3) float32``, NHWC, RGB
    pixel values 0..255 (the uint8 chips, cast). The graph applies dlib's ``input_rgb_image``
    normalisation itself, ``(pixel - channel mean) / 256`` with the means stored in the file
    (122.782, 117.001, 104.298), so callers never repeat it. Output ``descriptors``:
    ``(n, 128) float32``, dlib's raw (unnormalised) descriptors.
``mmod``
    The MMOD CNN face detector's convolutional part. Graph input ``pyramid``:
    ``(n, 3, rows, cols) float32``, NCHW, an image pyramid already tiled and normalised the way
    dlib's ``input_rgb_image_pyramid`` does (built in numpy by :mod:`.onnx_runtime`). Output
    ``scores``: ``(n, 1, rows', cols')``, one detector score per sliding-window position. The
    model's metadata (``visage.mmod``, JSON) carries what the runtime needs around the graph:
    channel means, pyramid padding, detector windows, the score-to-pixel mapping, the NMS
    thresholds and the smallest input the convolutions accept.

dlib stores batch norm folded into per-channel ``affine`` layers (or as ``bn_con`` statistics,
folded here the same way dlib folds them on load); each affine is folded again into the
convolution before it. ``add_prev`` adds tensors of different shapes by zero-padding the
smaller at the end of each axis, as dlib does, so the graph pads explicitly.

Conversion is deterministic (same source bytes, same :data:`CONVERTER_VERSION`: same output
bytes) and cached by :func:`converted_model_path` under ``$VISAGE_CACHE`` or
``~/.cache/visage``, in a file named by the source's sha256 and the converter version, written
atomically with its own sha256 beside it (checked before each use). Nothing is downloaded and
nothing converted is shipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from .dlib_format import DlibNet, Layer, Marker, read_net
from .weights import MODEL_FILES, model_path

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2
"""Bump whenever the graphs change, so cached conversions are rebuilt."""

OPSET = 17
IR_VERSION = 8
KINDS = ("resnet", "mmod")

FloatArray = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# The architectures, as dlib's C++ types spell them (data-flow order, input first).
# The file does not record tag and skip ids, nor which add_prev reads which tag; these do.


@dataclass(frozen=True)
class Op:
    """One step of an architecture: ``kind`` and its integer arguments.

    Kinds: ``con`` (filters, size, stride), ``affine``, ``relu``, ``max_pool`` / ``avg_pool``
    (size, stride; size 0 = the whole plane), ``fc`` (outputs), ``tag`` / ``skip`` /
    ``add_prev`` (tag id).
    """

    kind: str
    args: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[Op]:
    return [Op("con", (n, 3, stride)), Op("affine"), Op("relu"), Op("con", (n, 3, 1)), Op("affine")]


def _ares(n: int) -> list[Op]:
    return [Op("tag", (1,)), *_block(n, 1), Op("add_prev", (1,)), Op("relu")]


def _ares_down(n: int) -> list[Op]:
    return [
        Op("tag", (1,)),
        *_block(n, 2),
        Op("tag", (2,)),
        Op("skip", (1,)),
        Op("avg_pool", (2, 2)),
        Op("add_prev", (2,)),
        Op("relu"),
    ]


RESNET_ARCH: tuple[Op, ...] = (
    Op("con", (32, 7, 2)), Op("affine"), Op("relu"), Op("max_pool", (3, 2)),
    *_ares(32), *_ares(32), *_ares(32),
    *_ares_down(64), *_ares(64), *_ares(64), *_ares(64),
    *_ares_down(128), *_ares(128), *_ares(128),
    *_ares_down(256), *_ares(256), *_ares(256),
    *_ares_down(256),
    Op("avg_pool", (0, 1)), Op("fc", (128,)),
)  # fmt: skip
"""``anet_type`` of dlib's ``face_recognition_model_v1``."""

MMOD_ARCH: tuple[Op, ...] = (
    Op("con", (16, 5, 2)), Op("affine"), Op("relu"),
    Op("con", (32, 5, 2)), Op("affine"), Op("relu"),
    Op("con", (32, 5, 2)), Op("affine"), Op("relu"),
    Op("con", (45, 5, 1)), Op("affine"), Op("relu"),
    Op("con", (45, 5, 1)), Op("affine"), Op("relu"),
    Op("con", (45, 5, 1)), Op("affine"), Op("relu"),
    Op("con", (1, 9, 1)),
)  # fmt: skip
"""``net_type`` of dlib's ``cnn_face_detection_model_v1`` (loss_mmod over pyramid_down<6>)."""

MMOD_PYRAMID_N = 6
"""The detector's input is ``input_rgb_image_pyramid<pyramid_down<6>>``: each level 5/6 the last."""


def _check_layer(op: Op, layer: Layer | Marker, index: int) -> None:
    """Raise ModelError unless the parsed ``layer`` is what architecture step ``op`` says."""
    is_marker = op.kind in ("tag", "skip")
    ok: bool
    if isinstance(layer, Marker):
        ok = is_marker
    elif is_marker:
        ok = False
    elif op.kind == "con":
        n, size, stride = op.args
        a = layer.attrs
        ok = (
            layer.kind.startswith("con_")
            and (a["num_filters"], a["nr"], a["nc"]) == (n, size, size)
            and (a["stride_y"], a["stride_x"]) == (stride, stride)
        )
    elif op.kind == "affine":
        ok = layer.kind in ("affine_", "affine_2", "bn_con2") and layer.attrs["mode"] == 0
    elif op.kind == "relu":
        ok = layer.kind.startswith("relu_")
    elif op.kind in ("max_pool", "avg_pool"):
        size, stride = op.args
        a = layer.attrs
        ok = layer.kind.startswith(op.kind + "_") and (a["nr"], a["nc"], a["stride_y"]) == (
            size,
            size,
            stride,
        )
    elif op.kind == "add_prev":
        ok = layer.kind == "add_prev_"
    elif op.kind == "fc":
        ok = layer.kind.startswith("fc_") and layer.attrs["num_outputs"] == op.args[0]
    else:
        ok = False
    if not ok:
        found = "tag/skip" if isinstance(layer, Marker) else layer.kind
        raise ModelError(f"layer {index} is {found}, the architecture expects {op.kind}{op.args}")


def affine_params(layer: Layer) -> tuple[FloatArray, FloatArray]:
    """Per-channel ``(gamma, beta)`` of an affine layer, folding batch-norm statistics as dlib.

    dlib loads a ``bn_con`` as an affine with ``gamma / sqrt(running_var + eps)`` and
    ``beta - gamma' * running_mean``, in float32; the same arithmetic here keeps bits equal.
    """
    gamma = layer.tensors["gamma"].astype(np.float32)
    beta = layer.tensors["beta"].astype(np.float32)
    if layer.kind == "bn_con2":
        eps = np.float32(layer.attrs["eps"])
        var = layer.tensors["running_variances"].astype(np.float32)
        gamma = gamma / np.sqrt(var + eps)
        beta = beta - gamma * layer.tensors["running_means"].astype(np.float32)
    if layer.attrs.get("disabled"):
        return np.ones_like(gamma), np.zeros_like(beta)
    return gamma, beta


# ----------------------------------------------------------------------------------------------
# Graph building


Shape = tuple[int | str, int, int | str, int | str]


class GraphBuilder:
    """Accumulates ONNX nodes and initialisers with deterministic names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.weights[name] = value
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def initializers(self) -> list[TensorProto]:
        return [numpy_helper.from_array(v, name=k) for k, v in self.weights.items()]


def _conv_out(size: int | str, k: int, stride: int, pad: int) -> int | str:
    return (size + 2 * pad - k) // stride + 1 if isinstance(size, int) else size


def _build_body(
    g: GraphBuilder, x: str, shape: Shape, layers: Sequence[Layer | Marker], arch: Sequence[Op]
) -> tuple[str, Shape]:
    """Emit the layers (checked against ``arch``) after tensor ``x``; return the last output."""
    if len(layers) != len(arch):
        raise ModelError(f"the file has {len(layers)} layers, the architecture {len(arch)}")
    tags: dict[int, tuple[str, Shape]] = {}
    last_conv: tuple[str, str] | None = None  # (weight, bias) names of a conv whose output is x
    for index, (op, layer) in enumerate(zip(arch, layers)):
        _check_layer(op, layer, index)
        produced_conv: tuple[str, str] | None = None
        if op.kind == "tag":
            tags[op.args[0]] = (x, shape)
        elif op.kind == "skip":
            x, shape = tags[op.args[0]]
        elif op.kind == "add_prev":
            x, shape = _add_prev(g, (x, shape), tags[op.args[0]])
        else:
            assert isinstance(layer, Layer)
            if op.kind == "con":
                x, shape, produced_conv = _conv(g, x, shape, layer)
            elif op.kind == "affine":
                x = _affine(g, x, layer, last_conv)
            elif op.kind == "relu":
                if not layer.attrs["disabled"]:
                    x = g.node("Relu", [x])
            elif op.kind in ("max_pool", "avg_pool"):
                x, shape = _pool(g, x, shape, op.kind, layer)
            elif op.kind == "fc":
                x, shape = _fc(g, x, layer)
        last_conv = produced_conv
    return x, shape


def _conv(
    g: GraphBuilder, x: str, shape: Shape, layer: Layer
) -> tuple[str, Shape, tuple[str, str]]:
    a = layer.attrs
    filters = layer.tensors["filters"].astype(np.float32)
    bias = layer.tensors.get("biases", np.zeros(filters.shape[0], np.float32)).astype(np.float32)
    w = g.const("w", filters)
    b = g.const("b", bias)
    py, px, sy, sx = (int(a[k]) for k in ("padding_y", "padding_x", "stride_y", "stride_x"))
    kh, kw = filters.shape[2:]
    out = g.node("Conv", [x, w, b], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
    if a["use_relu"]:
        out = g.node("Relu", [out])
    new_shape: Shape = (
        shape[0],
        filters.shape[0],
        _conv_out(shape[2], kh, sy, py),
        _conv_out(shape[3], kw, sx, px),
    )
    return out, new_shape, (w, b)


def _affine(g: GraphBuilder, x: str, layer: Layer, conv: tuple[str, str] | None) -> str:
    """Per-channel ``x * gamma + beta``, folded into the convolution that produced ``x``."""
    gamma, beta = affine_params(layer)
    if conv is not None:
        w, b = conv
        g.weights[w] = (g.weights[w] * gamma[:, None, None, None]).astype(np.float32)
        g.weights[b] = (g.weights[b] * gamma + beta).astype(np.float32)
        return x
    scaled = g.node("Mul", [x, g.const("gamma", gamma.reshape(1, -1, 1, 1))])
    return g.node("Add", [scaled, g.const("beta", beta.reshape(1, -1, 1, 1))])


def _pool(g: GraphBuilder, x: str, shape: Shape, kind: str, layer: Layer) -> tuple[str, Shape]:
    a = layer.attrs
    global_op = "GlobalMaxPool" if kind == "max_pool" else "GlobalAveragePool"
    if a["nr"] == 0:
        return g.node(global_op, [x]), (shape[0], shape[1], 1, 1)
    kh, kw, sy, sx, py, px = (
        int(a[k]) for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    )
    op = "MaxPool" if kind == "max_pool" else "AveragePool"
    # dlib averages only the pixels inside the image (count_include_pad=0, ONNX's default).
    out = g.node(op, [x], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
    return out, (
        shape[0],
        shape[1],
        _conv_out(shape[2], kh, sy, py),
        _conv_out(shape[3], kw, sx, px),
    )


def _add_prev(g: GraphBuilder, a: tuple[str, Shape], b: tuple[str, Shape]) -> tuple[str, Shape]:
    """dlib's ``add_prev``: the sum over the larger shape, the smaller zero-padded at the end."""
    (xa, sa), (xb, sb) = a, b
    dims = list(zip(sa, sb))[1:]
    if any(not (isinstance(p, int) and isinstance(q, int)) for p, q in dims):
        raise ModelError("add_prev needs static shapes")
    target: Shape = (sa[0], *(max(int(p), int(q)) for p, q in dims))  # type: ignore[assignment]

    def pad(x: str, s: Shape) -> str:
        extra = [int(t) - int(v) for t, v in zip(target[1:], s[1:])]
        if not any(extra):
            return x
        pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
        return g.node("Pad", [x, g.const("pads", pads)])

    return g.node("Add", [pad(xa, sa), pad(xb, sb)]), target


def _fc(g: GraphBuilder, x: str, layer: Layer) -> tuple[str, Shape]:
    flat = g.node("Flatten", [x], axis=1)
    out = g.node("MatMul", [flat, g.const("fc", layer.tensors["weights"].astype(np.float32))])
    if "biases" in layer.tensors:
        out = g.node("Add", [out, g.const("fc_bias", layer.tensors["biases"].astype(np.float32))])
    return out, ("n", int(layer.attrs["num_outputs"]), 1, 1)


def _means(net: DlibNet) -> FloatArray:
    a = net.input.attrs
    return np.array([a["avg_red"], a["avg_green"], a["avg_blue"]], dtype=np.float32)


def onnx_model(
    g: GraphBuilder,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    name: str,
    metadata: dict[str, str],
    version: int = CONVERTER_VERSION,
) -> onnx.ModelProto:
    """The checked ONNX model of ``g``'s nodes; ``version`` is its converter's version."""
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers())
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="visage",
        producer_version=str(version),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def resnet_to_onnx(net: DlibNet) -> onnx.ModelProto:
    """The embedder graph: ``chips (n,150,150,3) float32 0..255`` → ``descriptors (n,128)``."""
    if net.input.kind != "input_rgb_image_sized" or net.loss.kind not in (
        "loss_metric_",
        "loss_metric_2",
    ):
        raise ModelError(f"not dlib's ResNet embedder: {net.input.kind} / {net.loss.kind}")
    rows, cols = int(net.input.attrs["nr"]), int(net.input.attrs["nc"])
    g = GraphBuilder()
    x = g.node("Transpose", ["chips"], perm=[0, 3, 1, 2])
    x = g.node("Sub", [x, g.const("mean", _means(net).reshape(1, 3, 1, 1))])
    x = g.node("Mul", [x, g.const("scale", np.array(1 / 256, dtype=np.float32))])
    _build_body(g, x, ("n", 3, rows, cols), net.layers, RESNET_ARCH)
    g.nodes[-1].output[0] = "descriptors"
    inputs = [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", rows, cols, 3])]
    outputs = [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", 128])]
    return onnx_model(g, inputs, outputs, "dlib_resnet_v1", {"visage.kind": "resnet"})


def mmod_to_onnx(net: DlibNet) -> onnx.ModelProto:
    """The detector's conv graph: ``pyramid (n,3,rows,cols)`` → ``scores (n,1,rows',cols')``."""
    if net.mmod is None or not net.input.kind.startswith("input_rgb_image_pyramid"):
        raise ModelError(f"not dlib's MMOD detector: {net.input.kind} / {net.loss.kind}")
    if net.mmod.use_bbr or not net.mmod.assume_image_pyramid:
        raise ModelError("MMOD with bounding-box regression or without a pyramid is unsupported")
    g = GraphBuilder()
    _build_body(g, "pyramid", ("n", 3, "rows", "cols"), net.layers, MMOD_ARCH)
    g.nodes[-1].output[0] = "scores"
    scale, offset = _output_to_input(net.layers)
    a = net.input.attrs
    meta = {
        "means": [float(v) for v in _means(net)],
        "pyramid_n": MMOD_PYRAMID_N,
        "pyramid_padding": int(a["pyramid_padding"]),
        "pyramid_outer_padding": int(a["pyramid_outer_padding"]),
        "windows": [[w.width, w.height] for w in net.mmod.windows],
        "min_size": _min_input_size(net.layers),
        "map_scale": scale,
        "map_offset": offset,
        "nms_iou": net.mmod.nms_iou,
        "nms_covered": net.mmod.nms_covered,
    }
    inputs = [helper.make_tensor_value_info("pyramid", TensorProto.FLOAT, ["n", 3, "rows", "cols"])]
    outputs = [
        helper.make_tensor_value_info(
            "scores", TensorProto.FLOAT, ["n", len(net.mmod.windows), None, None]
        )
    ]
    return onnx_model(
        g,
        inputs,
        outputs,
        "dlib_mmod_human_face_detector",
        {"visage.kind": "mmod", "visage.mmod": json.dumps(meta, sort_keys=True)},
    )


def _min_input_size(layers: Sequence[Layer | Marker]) -> int:
    """The smallest input side for which every convolution still has an output pixel."""
    size = 1
    for layer in reversed(layers):
        if isinstance(layer, Layer) and layer.kind.startswith("con_"):
            a = layer.attrs
            size = (size - 1) * int(a["stride_x"]) + int(a["nc"]) - 2 * int(a["padding_x"])
            size = max(size, 1)
    return size


def _output_to_input(layers: Sequence[Layer | Marker]) -> tuple[float, float]:
    """dlib's ``output_tensor_to_input_tensor`` as ``input = scale * output + offset``.

    Each convolution maps an output coordinate ``p`` to ``p * stride - padding + size // 2``
    of its input; pooling layers would too, but the detector has none.
    """
    scale, offset = 1.0, 0.0
    for layer in reversed(layers):
        if isinstance(layer, Layer) and layer.kind.startswith("con_"):
            a = layer.attrs
            stride, pad, half = int(a["stride_x"]), int(a["padding_x"]), int(a["nc"]) // 2
            scale, offset = scale * stride, offset * stride - pad + half
    return scale, offset


# ----------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """Where converted models live: ``$VISAGE_CACHE`` or ``~/.cache/visage``."""
    env = os.environ.get("VISAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "visage"


def convert(kind: str) -> onnx.ModelProto:
    """Convert the dlib model ``kind`` (one of :data:`KINDS`) to an in-memory ONNX model."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    net = read_net(model_path(kind))
    return resnet_to_onnx(net) if kind == "resnet" else mmod_to_onnx(net)


def cache_name(kind: str) -> str:
    """The cache file name of ``kind``: source sha256 prefix and converter version."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return f"{kind}-{MODEL_FILES[kind].sha256[:16]}-v{CONVERTER_VERSION}.onnx"


def converted_model_path(kind: str) -> Path:
    """Path of the ONNX conversion of ``kind``, converting (about a second) on first use.

    The cached file is used only while its bytes match the sha256 written beside it
    (``<file>.sha256``) when it was converted: a cache corrupted on disk would otherwise load
    and answer with wrong distances (one flipped byte in the embedder moved a genuine pair
    from 0.34 to 0.07). A file that does not match, or has no digest, is converted again from
    the shipped weights, whose own sha256 :func:`~.weights.model_path` checks.
    """
    return cached_conversion(cache_name(kind), lambda: convert(kind))


def cached_conversion(name: str, build: Callable[[], onnx.ModelProto]) -> Path:
    """Path of the cached ONNX file ``name``, built by ``build`` when missing or not matching
    the sha256 written beside it (the one cache rule for every converted model)."""
    path = cache_dir() / name
    digest = path.with_name(path.name + ".sha256")
    if path.is_file() and digest.is_file():
        if file_sha256(path) == digest.read_text("ascii").strip():
            return path
        log.warning("cached ONNX model %s does not match its sha256: converting it again", path)
    log.info("converting %s to ONNX at %s", name, path)
    data = build().SerializeToString(deterministic=True)
    write_atomic(path, data)
    write_atomic(digest, hashlib.sha256(data).hexdigest().encode("ascii"))
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    found = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            found.update(block)
    return found.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide a shared cache
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ModelError(f"cannot write the converted model {path}: {exc}") from exc
