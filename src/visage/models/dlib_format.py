"""A reader for dlib's serialized ``dnn`` networks (the ``.dat`` files of face_recognition_models).

dlib writes a network the way its C++ types nest: ``loss<layerN<...<layer1<input>>>>>``. Each
wrapper writes a version number and then its subnetwork *before* its own details, so a file is

    loss version, loss details,
    one version number per wrapper, outermost first,
    the input layer,
    each wrapper's details and training state, innermost (closest to the input) first.

Wrappers are computational layers (``add_layer``, version 2) or tags and skips (``add_tag_layer`` /
``add_skip_layer``, version 1, no data). A tag and a skip look the same on disk, and neither
records its id: the C++ type is the schema. :func:`read_net` therefore returns the layers in
data-flow order with tags and skips as :class:`Marker` entries, and the converter matches them
against the architecture it knows.

Primitive encodings (``dlib/serialize.h``): an integer is a control byte (low 4 bits: how many
little-endian bytes follow; bit 7: negative) and then its magnitude; a float is two integers,
mantissa then exponent (value = mantissa * 2**exponent; exponents 32000..32002 are +inf, -inf,
NaN); a string is its length and its bytes; a bool is the ASCII byte ``'1'`` or ``'0'``; a tensor
is version 2, four int64 dimensions (n, k, rows, cols) and its values as little-endian float32.

Everything malformed raises :class:`visage.errors.ModelError` naming the file and the offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

FloatArray = npt.NDArray[np.float32]
Scalar = int | float | bool | str

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


@dataclass(frozen=True)
class Layer:
    """One serialized layer: dlib's version string, its scalar fields and its tensors.

    ``kind`` is the string dlib writes first (``"con_6"``, ``"bn_con2"``, ``"relu_2"``...);
    ``attrs`` hold the scalar fields by dlib's member names; ``tensors`` the arrays, as float32
    with dlib's ``(n, k, rows, cols)`` shape.
    """

    kind: str
    attrs: dict[str, Scalar] = field(default_factory=dict)
    tensors: dict[str, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True)
class Marker:
    """A tag or skip wrapper (indistinguishable on disk; the architecture says which)."""

    offset: int


@dataclass(frozen=True)
class DetectorWindow:
    """One MMOD sliding window: its size in pixels and its label."""

    width: int
    height: int
    label: str


@dataclass(frozen=True)
class MmodOptions:
    """The parts of dlib's ``mmod_options`` that decide detections.

    Two boxes overlap for non-max suppression when intersection / (bounding box of both) is
    above ``nms_iou`` or the intersection covers more than ``nms_covered`` of either box.
    """

    windows: tuple[DetectorWindow, ...]
    nms_iou: float
    nms_covered: float
    use_bbr: bool
    assume_image_pyramid: bool


@dataclass(frozen=True)
class DlibNet:
    """A parsed network: loss, input and the layers between, in data-flow order."""

    loss: Layer
    input: Layer
    layers: tuple[Layer | Marker, ...]
    mmod: MmodOptions | None = None


class _Reader:
    """Sequential decoding of dlib's primitive encodings over an in-memory file."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.source}: malformed dlib file at byte {self.pos}: {what}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} more bytes, file ends at {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("ASCII floats (dlib's pre-2013 format) are not supported")
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise self.fail(f"float exponent {exponent} out of range") from None

    def read_bool(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {byte!r}")
        return byte == b"1"

    def read_string(self, limit: int = 1 << 16) -> str:
        n = self.read_int()
        if not 0 <= n <= limit:
            raise self.fail(f"implausible string length {n}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not UTF-8") from None

    def read_tensor(self) -> FloatArray:
        version = self.read_int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = math.prod(shape)
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_shape(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        n, k, r, c = (self.read_int() for _ in range(4))
        return (n, k, r, c)

    def peek_input_layer(self) -> bool:
        """True when an ``add_layer`` version number followed by an input layer's name is next."""
        start = self.pos
        try:
            version = self.read_int()
            name = self.read_string(limit=64)
        except ModelError:
            return False
        finally:
            self.pos = start
        return version in (2, 3) and name.startswith("input")


def _alias_count(shape: tuple[int, int, int, int]) -> int:
    return math.prod(shape)


def _read_con(r: _Reader, kind: str) -> Layer:
    if kind not in ("con_4", "con_5", "con_6"):
        raise r.fail(f"unsupported convolution version {kind!r}")
    params = r.read_tensor()
    attrs: dict[str, Scalar] = {
        "num_filters": r.read_int(),
        "nr": r.read_int(),
        "nc": r.read_int(),
        "stride_y": r.read_int(),
        "stride_x": r.read_int(),
        "padding_y": r.read_int(),
        "padding_x": r.read_int(),
    }
    filters = r.alias_shape()
    biases = r.alias_shape()
    for _ in range(4):
        r.read_float()  # learning-rate and weight-decay multipliers
    attrs["use_bias"] = r.read_bool() if kind in ("con_5", "con_6") else True
    attrs["use_relu"] = r.read_bool() if kind == "con_6" else False
    flat = params.reshape(-1)
    n_filters = _alias_count(filters)
    if n_filters + (_alias_count(biases) if attrs["use_bias"] else 0) != flat.size:
        raise r.fail(f"convolution params hold {flat.size} values, shapes say otherwise")
    tensors: dict[str, FloatArray] = {"filters": flat[:n_filters].reshape(filters)}
    if attrs["use_bias"]:
        tensors["biases"] = flat[n_filters:].reshape(-1)
    return Layer(kind, attrs, tensors)


def _read_affine(r: _Reader, kind: str) -> Layer:
    params = r.read_tensor().reshape(-1)
    gamma = r.alias_shape()
    beta = r.alias_shape()
    attrs: dict[str, Scalar] = {"mode": r.read_int()}
    attrs["disabled"] = r.read_bool() if kind == "affine_2" else False
    n = _alias_count(gamma)
    if n + _alias_count(beta) != params.size:
        raise r.fail("affine params do not match gamma and beta shapes")
    return Layer(kind, attrs, {"gamma": params[:n], "beta": params[n:]})


def _read_bn(r: _Reader, kind: str) -> Layer:
    params = r.read_tensor().reshape(-1)
    gamma = r.alias_shape()
    r.alias_shape()  # beta has gamma's shape
    r.read_tensor()  # means of the last training batch
    r.read_tensor()  # inverse std devs of the last training batch
    running_means = r.read_tensor().reshape(-1)
    running_variances = r.read_tensor().reshape(-1)
    r.read_int()  # num_updates
    r.read_int()  # running_stats_window_size
    for _ in range(4):
        r.read_float()  # learning-rate and weight-decay multipliers
    eps = r.read_float()
    n = _alias_count(gamma)
    tensors = {
        "gamma": params[:n],
        "beta": params[n:],
        "running_means": running_means,
        "running_variances": running_variances,
    }
    return Layer(kind, {"mode": 0 if kind == "bn_con2" else 1, "eps": eps}, tensors)


def _read_pool(r: _Reader, kind: str) -> Layer:
    if not kind.endswith("_2"):
        raise r.fail(f"unsupported pooling version {kind!r}")
    keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return Layer(kind, {k: r.read_int() for k in keys})


def _read_relu(r: _Reader, kind: str) -> Layer:
    return Layer(kind, {"disabled": r.read_bool() if kind == "relu_2" else False})


def _read_add_prev(r: _Reader, kind: str) -> Layer:
    return Layer(kind)


def _read_fc(r: _Reader, kind: str) -> Layer:
    if kind not in ("fc_2", "fc_3"):
        raise r.fail(f"unsupported fc version {kind!r}")
    num_outputs = r.read_int()
    num_inputs = r.read_int()
    params = r.read_tensor().reshape(-1)
    weights = r.alias_shape()
    biases = r.alias_shape()
    bias_mode = r.read_int()
    for _ in range(4):
        r.read_float()
    use_bias = r.read_bool() if kind == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    n = _alias_count(weights)
    if (
        n != num_inputs * num_outputs
        or n + (_alias_count(biases) if has_bias else 0) != params.size
    ):
        raise r.fail("fc params do not match weight and bias shapes")
    tensors: dict[str, FloatArray] = {"weights": params[:n].reshape(num_inputs, num_outputs)}
    if has_bias:
        tensors["biases"] = params[n:]
    attrs: dict[str, Scalar] = {"num_outputs": num_outputs, "num_inputs": num_inputs}
    return Layer(kind, attrs, tensors)


_LAYER_READERS: dict[str, Callable[[_Reader, str], Layer]] = {
    "con_": _read_con,
    "affine_": _read_affine,
    "bn_con2": _read_bn,
    "bn_fc2": _read_bn,
    "max_pool_": _read_pool,
    "avg_pool_": _read_pool,
    "relu_": _read_relu,
    "add_prev_": _read_add_prev,
    "fc_": _read_fc,
}


def _read_details(r: _Reader) -> Layer:
    kind = r.read_string()
    for prefix, reader in _LAYER_READERS.items():
        if kind == prefix or kind.startswith(prefix):
            return reader(r, kind)
    raise r.fail(f"unsupported layer type {kind!r}")


def _read_input(r: _Reader) -> Layer:
    kind = r.read_string()
    if kind in (
        "input_rgb_image",
        "input_rgb_image_sized",
        "input_rgb_image_pyramid",
        "input_rgb_image_pyramid2",
    ):
        attrs: dict[str, Scalar] = {
            "avg_red": r.read_float(),
            "avg_green": r.read_float(),
            "avg_blue": r.read_float(),
        }
        if kind == "input_rgb_image_sized":
            attrs["nr"] = r.read_int()
            attrs["nc"] = r.read_int()
        if kind.startswith("input_rgb_image_pyramid"):
            pyramid2 = kind.endswith("2")
            attrs["pyramid_padding"] = r.read_int() if pyramid2 else 10
            attrs["pyramid_outer_padding"] = r.read_int() if pyramid2 else 11
        return Layer(kind, attrs)
    raise r.fail(f"unsupported input layer {kind!r}")


def _read_mmod_options(r: _Reader) -> MmodOptions:
    version = r.read_int()
    if not 1 <= version <= 4:
        raise r.fail(f"mmod_options version {version}")
    windows: list[DetectorWindow] = []
    if version == 1:
        windows.append(DetectorWindow(r.read_int(), r.read_int(), ""))
    else:
        for _ in range(r.read_int()):
            wversion = r.read_int()
            width, height = r.read_int(), r.read_int()
            windows.append(DetectorWindow(width, height, r.read_string() if wversion == 2 else ""))
    r.read_float()  # loss_per_false_alarm
    r.read_float()  # loss_per_missed_target
    r.read_float()  # truth_match_iou_threshold
    nms_iou, nms_covered = r.read_float(), r.read_float()
    r.read_float()  # overlaps_ignore iou
    r.read_float()  # overlaps_ignore percent covered
    assume_pyramid = r.take(1)[0] == 0 if version >= 3 else True  # use_image_pyramid::yes == 0
    use_bbr = r.read_bool() if version >= 4 else False
    if version >= 4:
        r.read_float()  # bbr_lambda
    return MmodOptions(tuple(windows), nms_iou, nms_covered, use_bbr, assume_pyramid)


def _read_loss(r: _Reader) -> tuple[Layer, MmodOptions | None]:
    kind = r.read_string()
    if kind == "loss_metric_":
        return Layer(kind, {"margin": 0.1, "dist_thresh": 0.75}), None
    if kind == "loss_metric_2":
        return Layer(kind, {"margin": r.read_float(), "dist_thresh": r.read_float()}), None
    if kind == "loss_mmod_":
        return Layer(kind), _read_mmod_options(r)
    raise r.fail(f"unsupported loss layer {kind!r}")


def _skip_training_state(r: _Reader, version: int) -> None:
    """An ``add_layer``'s flags and gradient buffers, which inference does not need."""
    for _ in range(3):
        r.read_bool()
    r.read_tensor()  # x_grad
    r.read_tensor()  # cached_output
    if version == 2:
        r.read_tensor()  # params_grad


def parse_net(data: bytes, source: str = "<bytes>") -> DlibNet:
    """Parse a serialized dlib network (see the module docstring for the layout)."""
    r = _Reader(data, source)
    loss_version = r.read_int()
    if loss_version != 1:
        raise r.fail(f"add_loss_layer version {loss_version}, expected 1")
    loss, mmod = _read_loss(r)

    wrappers: list[tuple[int, int]] = []
    while not r.peek_input_layer():
        offset = r.pos
        version = r.read_int()
        if version not in (1, 2):
            raise r.fail(f"layer wrapper version {version}, expected 1 (tag/skip) or 2 (layer)")
        wrappers.append((version, offset))
        if len(wrappers) > 10_000:
            raise r.fail("no input layer found")

    input_version = r.read_int()
    input_layer = _read_input(r)
    layers: list[Layer | Marker] = []
    # The innermost add_layer wraps the input layer: its details follow the input's fields.
    first = _read_details(r)
    for _ in range(3):
        r.read_bool()
    r.read_tensor()  # x_grad
    r.read_tensor()  # cached_output
    r.read_tensor()  # grad_final
    if input_version >= 3:
        r.read_int()  # sample expansion factor
    layers.append(first)

    for version, offset in reversed(wrappers):
        if version == 1:
            layers.append(Marker(offset))
        else:
            layers.append(_read_details(r))
            _skip_training_state(r, version)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unread bytes after the network")
    return DlibNet(loss=loss, input=input_layer, layers=tuple(layers), mmod=mmod)


def read_net(path: str | Path) -> DlibNet:
    """Read and parse the dlib network in file ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from exc
    return parse_net(data, str(path))
