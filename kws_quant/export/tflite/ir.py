"""The exporter's intermediate representation: a chain of small ops read from a Keras model.

Each op knows what it computes in the float ``tf.function`` graph the converter sees (``apply(x, quantize)``):
:class:`FakeQuantOp` (a quantization point with the Keras quantizer's frozen range and int8 grid),
:class:`ActivationOp` (ReLU/ReLU6), :class:`ShapeOp` (pooling, flatten, reshape, padding; a 'valid' average pooling
after a quantizer becomes an int8 depthwise convolution), :class:`BatchNormOp` (before folding),
:class:`AffineOp` (a batch-norm left in float), :class:`LinearOp` (dense/conv with exact integer codes and folded
batch-norms) and :class:`FlattenOp`; :class:`LstmOp` is one step of a ``QuantLSTM`` cell. Also
:class:`UnsupportedModelError`, raised everywhere in the package.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

__all__ = ["ActivationOp", "AffineOp", "BatchNormOp", "FakeQuantOp", "FlattenOp", "LinearOp", "LstmOp", "ShapeOp",
           "UnsupportedModelError"]


class UnsupportedModelError(ValueError):
    """The model cannot be exported as asked; the message names the layers and what is missing."""


@dataclasses.dataclass
class FakeQuantOp:
    """A quantization point. ``lo is None`` marks where a quantizer is needed but the layer has none.
    ``grid``: the Keras quantizer's own int8 ``(float32 scale, zero point)``, written over the converter's (which it
    derives from ``lo, hi`` in float64 and can differ in the last bit); ``None`` keeps the converter's."""

    owner: str
    role: str
    lo: float | None = None
    hi: float | None = None
    narrow: bool = False
    grid: tuple | None = None

    def apply(self, x, quantize):
        if not quantize or self.lo is None:
            return x
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8,
                                                            narrow_range=self.narrow)


@dataclasses.dataclass
class ActivationOp:
    owner: str
    kind: str  # "relu" | "relu6"

    def apply(self, x, quantize):
        return tf.nn.relu(x) if self.kind == "relu" else tf.nn.relu6(x)


@dataclasses.dataclass
class ShapeOp:
    """A layer that only moves or averages values, called as is; in an int8 export a 'valid' average pooling is a
    depthwise convolution with weights ``1/pool_size``, re-quantized to the input's range (``pool_range``)."""

    layer: keras.layers.Layer
    pool_range: FakeQuantOp | None = None

    @property
    def owner(self):
        return self.layer.name

    @staticmethod
    def depthwise_pool(layer) -> bool:
        return (isinstance(layer, (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D))
                and layer.padding == "valid" and layer.data_format == "channels_last")

    @staticmethod
    def averages(layer) -> bool:
        return isinstance(layer, (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
                                  keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D))

    def pool_size(self) -> int:
        return int(np.prod(self.layer.pool_size))

    def apply(self, x, quantize):
        if not (quantize and self.pool_range is not None):
            return self.layer(x)
        layer = self.layer
        one_d = isinstance(layer, keras.layers.AveragePooling1D)
        size = (layer.pool_size[0], 1) if one_d else tuple(layer.pool_size)
        # A 1-D pooling is a (k, 1) depthwise over [B, T, 1, C]; its width stride is moot (width 1), so it takes the
        # time stride too: TF's CPU depthwise kernel refuses unequal row/column strides on some CPUs (AMD EPYC).
        strides = (layer.strides[0],) * 2 if one_d else tuple(layer.strides)
        x4 = tf.expand_dims(x, 2) if one_d else x
        w = tf.constant(np.full(size + (x.shape[-1], 1), 1.0 / (size[0] * size[1]), np.float32))
        y = tf.nn.depthwise_conv2d(x4, w, strides=(1,) + strides + (1,), padding="VALID")
        return self.pool_range.apply(tf.squeeze(y, 2) if one_d else y, quantize)


@dataclasses.dataclass
class BatchNormOp:
    owner: str
    gain: np.ndarray  # float64 [channels]
    offset: np.ndarray
    mean: np.ndarray  # moving mean of its input


@dataclasses.dataclass
class AffineOp:
    """A batch-norm that no linear op can absorb, computed in float: allowed in float export, and in int8 export
    only before the first quantizer (e.g. a per-mel normalisation in front of the input quantizer), where it runs
    in float ahead of the model's QUANTIZE op (``io_dtype="float32"``)."""

    owner: str
    gain: np.ndarray
    offset: np.ndarray

    def apply(self, x, quantize):
        return x * tf.constant(self.gain.astype(np.float32)) + tf.constant(self.offset.astype(np.float32))


@dataclasses.dataclass
class LinearOp:
    """A dense/conv op: kernel ``scale[o] · codes[..., o]`` (exact codes) or a float kernel, plus folded BN."""

    owner: str
    kind: str  # "dense" | "conv" | "depthwise" (1-D, kernel [taps, channels], depth multiplier 1)
    codes: np.ndarray | None  # integer codes in the Keras kernel layout; None for a float kernel
    bits: int | None  # the kernel quantizer's bits
    scale: np.ndarray  # float64 [out]
    kernel: np.ndarray  # float64, Keras layout: scale · codes, or the float kernel
    bias: np.ndarray  # float64 [out]
    has_bias: bool
    conv: dict | None = None  # strides, padding, dilation_rate
    in_gain: np.ndarray | None = None  # gain of a folded preceding BN, over input channels
    in_mean: np.ndarray | None = None  # that BN's moving mean (its expected input)
    out_gain: np.ndarray | None = None  # gain of a folded following BN, over output channels
    hybrid: bool = False  # float input and output, int8 weights (an LSTM's projections; dynamic input quantization)

    @property
    def exact(self) -> bool:
        """Whether the exported int8 codes are the kernel quantizer's own codes."""
        return self.codes is not None and self.in_gain is None

    def folded_kernel(self) -> np.ndarray:
        k = self.kernel
        if self.in_gain is not None and self.kind == "depthwise":
            raise UnsupportedModelError(f"layer {self.owner!r}: a batch-norm before a depthwise convolution cannot be "
                                        "folded into it")
        if self.in_gain is not None:
            k = k * self.in_gain[:, None]
        if self.out_gain is not None:
            k = k * self.out_gain
        return k

    def int8_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(int8 codes in the Keras layout, float32 scale [out])`` that the export writes."""
        if self.exact:
            g = np.ones_like(self.scale) if self.out_gain is None else self.out_gain
            codes = (self.codes * np.where(g < 0, -1, 1)).astype(np.int8)
            scale = self.scale * np.abs(g)
        else:  # re-quantize the folded kernel per output channel
            k = self.folded_kernel()
            amax = np.max(np.abs(k.reshape(-1, k.shape[-1])), axis=0)
            scale = np.where(amax > 0, amax / 127.0, 1.0)
            codes = np.clip(np.round(k / scale), -127, 127).astype(np.int8)
        return codes, np.maximum(scale, np.finfo(np.float32).tiny).astype(np.float32)

    def int8_bias(self) -> np.ndarray:
        """The float bias quantized to int32; bias-corrected when the kernel was re-quantized (package docstring)."""
        if self.exact or self.in_mean is None:
            return self.bias
        codes, scale = self.int8_weights()
        delta = codes.astype(np.float64) * scale.astype(np.float64) - self.folded_kernel()
        spatial = tuple(range(delta.ndim - 2))
        return self.bias - self.in_mean @ (delta.sum(axis=spatial) if spatial else delta)

    def apply(self, x, quantize):
        k = tf.constant(self.folded_kernel().astype(np.float32))
        if self.kind == "dense":
            y = tf.matmul(x, k) if len(x.shape) == 2 else tf.tensordot(x, k, axes=1)
        elif self.kind == "depthwise":  # [B, T, C] as [B, 1, T, C]: a DEPTHWISE_CONV_2D with a [1, taps, C] filter
            c = self.conv
            if c["padding"] != "valid":
                raise UnsupportedModelError(f"layer {self.owner!r}: only 'valid' depthwise convolutions export")
            w = tf.reshape(k, [1, k.shape[0], k.shape[1], 1])
            y = tf.nn.depthwise_conv2d(tf.expand_dims(x, 1), w, strides=[1, 1, c["strides"][0], 1], padding="VALID",
                                       dilations=[1, c["dilation_rate"][0]])
            y = tf.squeeze(y, 1)
        else:
            c = self.conv
            padding = c["padding"]
            if padding == "causal":
                x = tf.pad(x, [[0, 0], [c["dilation_rate"][0] * (k.shape[0] - 1), 0], [0, 0]])
                padding = "valid"
            y = tf.nn.convolution(x, k, strides=list(c["strides"]), padding=padding.upper(),
                                  dilations=list(c["dilation_rate"]))
        if self.has_bias:
            y = y + tf.constant(self.bias.astype(np.float32))
        return y



@dataclasses.dataclass
class FlattenOp:
    owner: str

    def apply(self, x, quantize):
        return tf.reshape(x, [tf.shape(x)[0], -1])



@dataclasses.dataclass
class LstmOp:
    """One step of a ``QuantLSTM`` (gate order i, f, g, o) for the streaming export. The two projections hold the
    kernel's and the recurrent kernel's exact codes (``x_proj`` carries the bias) and become *hybrid*
    ``FULLY_CONNECTED`` ops (int8 weights, float in and out); the gates and the cell state are computed in float, as
    ``QuantLSTM`` computes them; the emitted ``h = o·tanh(c)`` is quantized on the layer's output quantizer's grid
    (``output``), and the float ``h`` and ``c`` are the recurrent state, as in Keras."""

    owner: str
    units: int
    x_proj: LinearOp  # kernel [in, 4H] and bias [4H]
    h_proj: LinearOp  # recurrent kernel [H, 4H], no bias
    input: FakeQuantOp | None  # the layer's input quantizer, when it has one
    output: FakeQuantOp  # the output quantizer's grid (or a calibrated one)

    def quant_points(self) -> list:
        return ([self.input] if self.input else []) + [self.output]

    def cell(self, x, h, c, quantize: bool, record: dict | None = None):
        """``x [B, in]``, ``h, c [B, H]`` → ``(output, h, c)``: the emitted ``h`` on the output grid, and the float
        ``h``, ``c`` the next step reads (as Keras feeds them back); ``record``: collect a calibrated output's input
        by ``id``."""
        if self.input is not None:
            x = self.input.apply(x, quantize)
        z = self.x_proj.apply(x, quantize) + self.h_proj.apply(h, quantize)
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        if record is not None and self.output.role == "calibrated":
            record.setdefault(id(self.output), []).append(h)
        return self.output.apply(h, quantize), h, c
