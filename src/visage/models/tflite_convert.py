"""Convert a float TensorFlow Lite graph (MediaPipe's BlazeFace) to ONNX, in numpy + ``onnx``.

The graph input ``image`` is ``(n, size, size, 3) float32`` NHWC RGB pixel values 0..255; the
graph maps them to the model's ``[-1, 1]`` itself (``x / 127.5 - 1``), then runs NCHW.
Outputs: ``regressors (n, anchors, 16)`` (box centre, size and 6 keypoints, in input pixels
relative to each anchor) and ``scores (n, anchors, 1)`` (sigmoid of the classifier logits).

TFLite's operators map one to one: ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` (filters ``OHWI`` /
``1HWC`` → ``OIHW``; ``SAME`` padding made explicit and asymmetric as TensorFlow pads, more
after than before), ``MAX_POOL_2D``, ``ADD``, ``RELU``, ``PAD`` (on channels, for the residual
adds), ``RESIZE_BILINEAR`` (half-pixel centres), ``RESHAPE`` and ``CONCATENATION`` (on the NHWC
order, so tensors go back to NHWC before a reshape). ``DEQUANTIZE`` of the float16 weights is
done here, once: the ONNX graph holds float32 constants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .onnx_convert import GraphBuilder, onnx_model
from .tflite_format import Operator, TfliteGraph

TFLITE_CONVERTER_VERSION = 1
"""Bump whenever the converted graphs change, so cached conversions are rebuilt."""

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
_ACTIVATIONS = {0: None, 1: "Relu"}


class _Converter:
    """Walks the TFLite operators, naming each tensor's ONNX value and tracking its layout
    (4-d activations are NCHW in the ONNX graph; everything else keeps TFLite's order)."""

    def __init__(self, graph: TfliteGraph) -> None:
        self.tf = graph
        self.g = GraphBuilder()
        self.values: dict[int, str] = {}
        self.nchw: set[int] = set()
        self.consts: dict[int, np.ndarray] = {
            i: t.data for i, t in enumerate(graph.tensors) if t.data is not None
        }

    def const(self, index: int) -> np.ndarray:
        try:
            return self.consts[index]
        except KeyError:
            raise ModelError(f"tensor {self.tf.tensors[index].name!r} is not a constant") from None

    def value(self, index: int) -> str:
        if index not in self.values:
            raise ModelError(f"tensor {self.tf.tensors[index].name!r} is used before it is made")
        return self.values[index]

    def shape(self, index: int) -> tuple[int, ...]:
        return self.tf.tensors[index].shape

    def emit(self, op: Operator) -> None:
        handler = getattr(self, "_" + op.op.lower(), None)
        if handler is None:
            raise ModelError(f"unsupported TFLite operator {op.op}")
        out = handler(op)
        if op.op != "DEQUANTIZE":
            self.values[op.outputs[0]] = self._activation(out, op.options.get("activation", 0))

    def _activation(self, x: str, code: int) -> str:
        if code not in _ACTIVATIONS:
            raise ModelError(f"unsupported fused activation {code}")
        act = _ACTIVATIONS[code]
        return self.g.node(act, [x]) if act else x

    def _same_pads(self, op: Operator, kernel: tuple[int, int]) -> list[int]:
        """ONNX ``pads`` (top, left, bottom, right) for TFLite's padding: VALID is none; SAME
        pads ``total // 2`` before and the rest after, as TensorFlow does."""
        if op.options["padding"] == 1:
            return [0, 0, 0, 0]
        _, h, w, _ = self.shape(op.inputs[0])
        pads = []
        for size, k, stride in (
            (h, kernel[0], op.options["stride_h"]),
            (w, kernel[1], op.options["stride_w"]),
        ):
            out = -(-size // stride)
            pads.append(max((out - 1) * stride + k - size, 0))
        return [pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2]

    def _check_dilation(self, op: Operator) -> None:
        if (op.options["dilation_h"], op.options["dilation_w"]) != (1, 1):
            raise ModelError(f"dilated {op.op} is unsupported")

    def _dequantize(self, op: Operator) -> None:
        self.consts[op.outputs[0]] = self.const(op.inputs[0]).astype(np.float32)

    def _conv_common(self, op: Operator, weights: np.ndarray, group: int) -> str:
        self._check_dilation(op)
        bias = self.const(op.inputs[2]).astype(np.float32) if len(op.inputs) > 2 else None
        kh, kw = weights.shape[2:]
        inputs = [self.value(op.inputs[0]), self.g.const("w", np.ascontiguousarray(weights))]
        if bias is not None:
            inputs.append(self.g.const("b", bias))
        self.nchw.add(op.outputs[0])
        return self.g.node(
            "Conv", inputs, kernel_shape=[kh, kw], group=group, pads=self._same_pads(op, (kh, kw)),
            strides=[op.options["stride_h"], op.options["stride_w"]],
        )  # fmt: skip

    def _conv_2d(self, op: Operator) -> str:
        weights = self.const(op.inputs[1]).astype(np.float32).transpose(0, 3, 1, 2)  # OHWI→OIHW
        return self._conv_common(op, weights, 1)

    def _depthwise_conv_2d(self, op: Operator) -> str:
        if op.options["depth_multiplier"] != 1:
            raise ModelError("depthwise convolution with a depth multiplier is unsupported")
        weights = self.const(op.inputs[1]).astype(np.float32).transpose(3, 0, 1, 2)  # 1HWC→C1HW
        return self._conv_common(op, weights, weights.shape[0])

    def _max_pool_2d(self, op: Operator) -> str:
        kernel = (op.options["filter_h"], op.options["filter_w"])
        self.nchw.add(op.outputs[0])
        return self.g.node(
            "MaxPool", [self.value(op.inputs[0])], kernel_shape=list(kernel),
            strides=[op.options["stride_h"], op.options["stride_w"]],
            pads=self._same_pads(op, kernel),
        )  # fmt: skip

    def _add(self, op: Operator) -> str:
        a, b = op.inputs
        if (a in self.nchw) != (b in self.nchw):
            raise ModelError("ADD of tensors in different layouts is unsupported")
        if a in self.nchw:
            self.nchw.add(op.outputs[0])
        return self.g.node("Add", [self.value(a), self.value(b)])

    def _relu(self, op: Operator) -> str:
        if op.inputs[0] in self.nchw:
            self.nchw.add(op.outputs[0])
        return self.g.node("Relu", [self.value(op.inputs[0])])

    def _pad(self, op: Operator) -> str:
        pads = self.const(op.inputs[1]).astype(np.int64)  # (4, 2): before/after per NHWC axis
        if op.inputs[0] not in self.nchw:
            raise ModelError("PAD of a tensor that is not an NHWC activation is unsupported")
        order = [0, 3, 1, 2]
        onnx_pads = np.concatenate([pads[order, 0], pads[order, 1]])
        self.nchw.add(op.outputs[0])
        return self.g.node("Pad", [self.value(op.inputs[0]), self.g.const("pads", onnx_pads)])

    def _resize_bilinear(self, op: Operator) -> str:
        if not op.options["half_pixel_centers"] or op.options["align_corners"]:
            raise ModelError("RESIZE_BILINEAR is supported with half-pixel centres only")
        _, h, w, _ = self.shape(op.inputs[0])
        out_h, out_w = (int(v) for v in self.const(op.inputs[1]))
        scales = np.array([1, 1, out_h / h, out_w / w], np.float32)
        self.nchw.add(op.outputs[0])
        return self.g.node(
            "Resize", [self.value(op.inputs[0]), "", self.g.const("scales", scales)],
            mode="linear", coordinate_transformation_mode="half_pixel",
        )  # fmt: skip

    def _reshape(self, op: Operator) -> str:
        x = self.value(op.inputs[0])
        if op.inputs[0] in self.nchw:
            x = self.g.node("Transpose", [x], perm=[0, 2, 3, 1])  # back to TFLite's NHWC order
        target = self.shape(op.outputs[0])
        if len(target) != 3:
            raise ModelError(f"RESHAPE to {target} is unsupported (only to (n, anchors, k))")
        shape = np.array([0, -1, target[-1]], np.int64)  # 0: keep the batch dimension
        return self.g.node("Reshape", [x, self.g.const("shape", shape)])

    def _concatenation(self, op: Operator) -> str:
        axis = op.options["axis"]
        layouts = {i in self.nchw for i in op.inputs}
        if len(layouts) != 1:
            raise ModelError("CONCATENATION of tensors in different layouts is unsupported")
        if layouts == {True}:
            axis = _NHWC_TO_NCHW_AXIS[axis % 4]
            self.nchw.add(op.outputs[0])
        return self.g.node("Concat", [self.value(i) for i in op.inputs], axis=axis)


def tflite_to_onnx(graph: TfliteGraph, name: str) -> onnx.ModelProto:
    """The ONNX model of a BlazeFace graph: ``image (n,s,s,3) 0..255`` → regressors, scores."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 2:
        raise ModelError("not a BlazeFace graph: expected one input and two outputs")
    (index,) = graph.inputs
    _, size, width, channels = graph.tensors[index].shape
    if size != width or channels != 3:
        raise ModelError(f"not a BlazeFace graph: input {graph.tensors[index].shape}")
    c = _Converter(graph)
    x = c.g.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    x = c.g.node("Mul", [x, c.g.const("scale", np.array(1 / 127.5, np.float32))])
    c.values[index] = c.g.node("Sub", [x, c.g.const("one", np.array(1, np.float32))])
    c.nchw.add(index)
    for op in graph.operators:
        c.emit(op)
    by_width = {graph.tensors[i].shape[-1]: i for i in graph.outputs}
    if set(by_width) != {16, 1}:
        raise ModelError(
            f"not a BlazeFace graph: outputs {[graph.tensors[i].shape for i in graph.outputs]}"
        )
    anchors = graph.tensors[by_width[1]].shape[1]
    c.g.nodes.append(helper.make_node("Identity", [c.value(by_width[16])], ["regressors"]))
    c.g.nodes.append(helper.make_node("Sigmoid", [c.value(by_width[1])], ["scores"]))
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", size, size, 3])]
    outputs = [
        helper.make_tensor_value_info("regressors", TensorProto.FLOAT, ["n", anchors, 16]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", anchors, 1]),
    ]
    meta = {"visage.kind": name, "visage.input_size": str(size)}
    return onnx_model(c.g, inputs, outputs, name, meta, TFLITE_CONVERTER_VERSION)
