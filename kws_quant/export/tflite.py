"""LiteRT (TFLite) export of QAT models: int8 ops whose weights are exactly the quantizers' integer codes.

How an int8 export is made (:func:`to_tflite`):

1. The Keras model is read as a chain of layers (one input, one output, each layer fed by the one before) into a
   short list of operations: linear ops (``QuantDense``/``QuantConv1D``/``QuantConv2D``; plain Keras
   ``Dense``/``Conv1D``/``Conv2D`` for float export), batch-norms, activations (linear, ReLU, ReLU6), fake-quant
   points (every 8-bit input/output/activation quantizer, with the model's frozen moving-average range) and
   shape-only layers (pooling, flatten, reshape, zero-padding). Dropout and noise layers are dropped.
2. Batch-norm is folded, with the gain ``g = γ/√(σ²+ε)`` and offset the Keras model uses (the quantized ones,
   ``bn.quantized_weights()``, when BN has quantizers):

   - BN *after* a linear op (``dense_i → bn_i``): ``g`` multiplies the per-output-channel scale, ``g·bias + offset``
     becomes the bias. The integer codes stay exactly the quantizer's (negated on a channel whose gain is
     negative: TFLite scales are positive).
   - BN *before* a linear op, directly or through 'valid' average pooling / flatten (per-channel affine maps
     commute with both): ``g`` multiplies the kernel rows (input channels), ``offset @ W`` is added to the bias.
     Such a kernel is off the quantizer's grid, so an int8 export re-quantizes it per output channel
     (``s = max|W'|/127``) and corrects the bias by ``-μ·(W_int8 - W')``, ``μ`` the BN's moving mean (its
     expected input), so the re-quantization error has zero mean.
   - BN *before the input quantizer* (the KWS model's per-mel ``bn_in``): an int8 model cannot absorb it (the
     quantizer sees its output), so it stays a float MUL + ADD ahead of the model's QUANTIZE op, moved after a
     'valid' average pooling that follows it (both act per channel and commute: fewer values to scale); the model
     then takes float windows (``io_dtype="auto"`` picks that). A float export folds it into ``dense_in``.
   - Any other BN: ``ValueError``.
3. A float ``tf.function`` graph is built from the folded, dequantized weights with
   ``tf.quantization.fake_quant_with_min_max_vars`` at every quantization point: the op, range widening and nudging
   the Keras quantizers themselves use. The model's output (logits) has no quantizer of its own: its int8 range is
   the min/max of the graph's outputs on ``representative_data``, widened by ``output_margin`` of the span on
   each side (windows beyond the range would saturate).
4. ``tf.lite.TFLiteConverter`` converts it (``optimizations=[DEFAULT]``; the fake-quant ops make it a QAT
   conversion) to ``FULLY_CONNECTED``/``CONV_2D`` ops with per-channel int8 weights, int32 biases and ReLU fused
   into the op. The converter re-derives weight codes from the float weights (it rescales every channel to use
   ±127), so the flatbuffer is patched (``tensorflow.lite.tools.flatbuffer_utils``): each weight tensor gets the
   quantizer's codes and scales, each bias is re-quantized as ``round(b / (s_in·s_w))`` on the patched scales.
   The result is read back and checked (codes, scales, one invoke) before it is written.

Pooling: a pooling before the first quantizer (the KWS model pools its normalised float frames, then quantizes)
stays a float ``AVERAGE_POOL_2D``. A 'valid' average pooling *after* a quantizer becomes an int8
``DEPTHWISE_CONV_2D`` with weights ``1/pool_size`` (code 127, scale ``1/(127·pool_size)``) re-quantized to the
input's own grid: LiteRT's int8 ``AVERAGE_POOL_2D`` is not taken by the XNNPACK delegate, which splits the graph
and runs a slow builtin kernel (``docs/bench_tflite.md``: 1.4× instead of ~2.7× over float).

Agreement with the Keras model: the KWS model's export is within one output step (``docs/bench_tflite.md``). What
int8 cannot reproduce is the average of quantized frames (a half step of the input grid, which a Keras model that
pools after its quantizer keeps in float and int8 rounds back to the grid: some logits then land up to ~1.5 steps
away; ``fold_pooling=True`` folds such a pooling into the dense layer after it, exact but with a kernel
``pool_size`` times larger) and a kernel re-quantized after folding a preceding BN.

Size: per-channel weights and int32 biases each carry a float32 scale and an int64 zero point per output
channel; identical vectors (the all-zero zero points) are written once and shared by the tensors that have them.

Interface: ``io_dtype="auto"`` (default) gives **int8 input and output** tensors (a fully integer model) when
nothing runs in float before the input quantizer: their scale and zero point are the input quantizer's and the
calibrated output range's, and quantizing a float window with :func:`quantize_input` (TF's fake-quant
arithmetic) is the Keras model's own input quantization. Otherwise, or with
``io_dtype="float32"``, the model takes and returns float32 through QUANTIZE/DEQUANTIZE ops. :func:`run_tflite`
handles both.

Split front end: ``split_front_end=True`` exports the model from its input quantizer on, with int8 input and output,
and writes the leading per-frame layers (per-channel batch-norm, time pooling) as a
:class:`~kws_quant.export.front_end.FrontEnd` (``<name>.front_end.json``) that a streaming device runs once per
frame; ``FrontEnd.apply(windows)`` gives the int8 windows the model takes.

Sub-8-bit packing: with ``int4=True`` the weights of a ``FULLY_CONNECTED`` op whose kernel quantizer has at most 4
bits are stored as packed ``INT4`` tensors (two codes a byte, the same codes and scales); LiteRT's builtin kernels
and XNNPACK run them and give the same outputs.

Float export (``quantize=False``, :func:`to_tflite_float`) builds the same folded graph without fake-quant points
and converts it without optimizations: the float baseline (float32 weights). For a QAT model its weights are what
the model uses at its current stage (dequantized codes at stage ≥ 1).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from kws_quant import qat
from kws_quant.export.front_end import FrontEnd, front_end_path, quantize_codes
from kws_quant.layers import (QuantActivation, QuantBatchNormalization, QuantConv1D, QuantConv2D, QuantDense,
                              QuantLayer)

__all__ = ["UnsupportedModelError", "make_interpreter", "output_grid", "output_step", "quantize_input",
           "read_linear_ops", "run_tflite", "to_tflite", "to_tflite_float"]

_IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                    keras.layers.Identity)
_SHAPE_LAYERS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.AveragePooling1D,
                 keras.layers.AveragePooling2D, keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
                 keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                 keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding1D,
                 keras.layers.ZeroPadding2D)
_LINEAR_LAYERS = (QuantDense, QuantConv1D, QuantConv2D, keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)
_ACTIVATIONS = {keras.activations.linear: None, keras.activations.relu: "relu", keras.activations.relu6: "relu6"}
_LINEAR_OPS = ("FULLY_CONNECTED", "CONV_2D")
_SUPPORTED = ("QuantDense, QuantConv1D, QuantConv2D, QuantBatchNormalization, QuantActivation (linear/relu/relu6), "
              "Dense/Conv1D/Conv2D/BatchNormalization/Activation/ReLU (float export), pooling, Flatten, Reshape, "
              "ZeroPadding, Dropout/noise")


class UnsupportedModelError(ValueError):
    """The model cannot be exported as asked; the message names the layers and what is missing."""


# ------------------------------------------------------------------------------------------------------------
# The intermediate representation: a chain of small ops, each with ``apply(x, quantize)`` for the float graph.
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _FakeQuant:
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
class _Act:
    owner: str
    kind: str  # "relu" | "relu6"

    def apply(self, x, quantize):
        return tf.nn.relu(x) if self.kind == "relu" else tf.nn.relu6(x)


@dataclasses.dataclass
class _Shape:
    """A layer that only moves or averages values, called as is; in an int8 export a 'valid' average pooling is a
    depthwise convolution with weights ``1/pool_size``, re-quantized to the input's range (``pool_range``)."""

    layer: keras.layers.Layer
    pool_range: _FakeQuant | None = None

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
class _BatchNorm:
    owner: str
    gain: np.ndarray  # float64 [channels]
    offset: np.ndarray
    mean: np.ndarray  # moving mean of its input


@dataclasses.dataclass
class _Affine:
    """A batch-norm that no linear op can absorb, computed in float: allowed in float export, and in int8 export
    only before the first quantizer (e.g. a per-mel normalisation in front of the input quantizer), where it runs
    in float ahead of the model's QUANTIZE op (``io_dtype="float32"``)."""

    owner: str
    gain: np.ndarray
    offset: np.ndarray

    def apply(self, x, quantize):
        return x * tf.constant(self.gain.astype(np.float32)) + tf.constant(self.offset.astype(np.float32))


@dataclasses.dataclass
class _Linear:
    """A dense/conv op: kernel ``scale[o] · codes[..., o]`` (exact codes) or a float kernel, plus folded BN."""

    owner: str
    kind: str  # "dense" | "conv"
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

    @property
    def exact(self) -> bool:
        """Whether the exported int8 codes are the kernel quantizer's own codes."""
        return self.codes is not None and self.in_gain is None

    def folded_kernel(self) -> np.ndarray:
        k = self.kernel
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
        """The float bias quantized to int32; bias-corrected when the kernel was re-quantized (module docstring)."""
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


# ------------------------------------------------------------------------------------------------------------
# Reading the Keras model.
# ------------------------------------------------------------------------------------------------------------
def _chain(model) -> list:
    """The model's layers in order, checking that they form one chain."""
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"expected a keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
                                    "outputs; the export supports one input and one output")
    prev, layers = model.inputs[0], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            fed_by_prev = layer.input is prev
        except (AttributeError, ValueError):
            fed_by_prev = False
        if not fed_by_prev:
            raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}) is not fed by the layer "
                                        "before it; the export supports a chain of layers (one input, one output, "
                                        "no branches or nested models)")
        layers.append(layer)
        prev = layer.output
    if prev is not model.outputs[0]:
        raise UnsupportedModelError(f"model {model.name!r}: the last layer's output is not the model's output")
    return layers


def _role_on(layer, role: str, stage: int) -> bool:
    return isinstance(layer, QuantLayer) and role in layer.quantizers and stage >= layer.stage_of(role)


def _activation(layer, fn) -> str | None:
    for known, kind in _ACTIVATIONS.items():
        if fn is known:
            return kind
    name = getattr(fn, "__name__", repr(fn))
    raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}): activation {name!r} is not "
                                "supported; supported: linear, relu, relu6")


def _data_fake_quant(layer, role: str, quantize: bool) -> list:
    """The fake-quant op of a data role (input/output) of ``layer``; a placeholder when it has no quantizer."""
    if not quantize:
        return []
    if not isinstance(layer, QuantLayer) or role not in layer.quantizers:
        return [_FakeQuant(layer.name, role)]
    q = layer.quantizers[role]
    where = f"layer {layer.name!r} ({role} quantizer {q!r})"
    if q.bits != 8:
        raise UnsupportedModelError(f"{where}: the int8 export supports 8-bit inputs and activations only")
    state = layer.quantizer_state(role)
    if not state.get("ema"):
        raise UnsupportedModelError(f"{where}: its range comes from each batch (range='current'), which an integer "
                                    "model cannot do; use a moving-average range (range='ema')")
    if getattr(q, "per_channel", False):
        raise UnsupportedModelError(f"{where}: per-channel activation ranges are not supported by int8 TFLite")
    if float(np.asarray(state["seen"])) <= 0:
        raise UnsupportedModelError(f"{where}: the moving-average range was never updated; train the model in stage 2 "
                                    "(or run it with training=True on data) before exporting")
    lo, hi, narrow = q.fake_quant_range(state)
    ic = q.codes(np.zeros((), np.float32), state)
    grid = (float(ic.scale), int(ic.zero_point) - (0 if ic.signed else 2 ** (q.bits - 1)))
    return [_FakeQuant(layer.name, role, lo, hi, narrow=narrow, grid=grid)]


def _weight_value(layer, role: str, tensor, stage: int, cache: dict) -> np.ndarray:
    """The value the model uses for a weight role at ``stage`` (dequantized codes when its quantizer is on)."""
    if _role_on(layer, role, stage):
        if not cache:
            cache.update(layer.quantized_weights())
        return cache[role].dequantize().astype(np.float64)
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def _linear_op(layer, stage: int) -> _Linear:
    cache, codes, bits = {}, None, None
    if _role_on(layer, "kernel", stage):
        cache.update(layer.quantized_weights())
        ic = cache["kernel"]
        sc = np.asarray(ic.scale, np.float64)
        zp = np.broadcast_to(np.asarray(ic.zero_point, np.float64), sc.shape)
        if np.all(zp == 0):
            codes = ic.codes.astype(np.int64)
        elif np.allclose(2 * zp, np.round(2 * zp)) and np.all(np.round(2 * zp) % 2 == 1):
            # dorefa mid-rise grid: s·(n - (2^b-1)/2) = (s/2)·(2n - (2^b-1)): odd signed codes, half the scale
            codes = 2 * ic.codes.astype(np.int64) - np.round(2 * zp).astype(np.int64)
            sc = sc / 2.0
        else:
            raise UnsupportedModelError(f"layer {layer.name!r}: kernel quantizer {layer.quantizers['kernel']!r} has a "
                                        "non-zero zero point; int8 TFLite weights must be symmetric")
        if np.abs(codes).max(initial=0) > 127:
            raise UnsupportedModelError(f"layer {layer.name!r}: kernel codes reach ±{np.abs(codes).max()}, beyond "
                                        "int8's ±127")
        bits = layer.quantizers["kernel"].bits
        scale = np.broadcast_to(sc.reshape(-1) if sc.size > 1 else sc.reshape(()), (codes.shape[-1],)).copy()
        kernel = codes * scale
    else:
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)
        scale = np.ones(kernel.shape[-1])
    has_bias = bool(getattr(layer, "use_bias", False)) and getattr(layer, "bias", None) is not None
    bias = _weight_value(layer, "bias", layer.bias, stage, cache) if has_bias else np.zeros(kernel.shape[-1])
    conv = None
    if len(kernel.shape) > 2:
        if getattr(layer, "groups", 1) != 1 or getattr(layer, "data_format", "channels_last") != "channels_last":
            raise UnsupportedModelError(f"layer {layer.name!r}: grouped or channels_first convolutions are not "
                                        "supported")
        conv = dict(strides=tuple(layer.strides), padding=layer.padding, dilation_rate=tuple(layer.dilation_rate))
    return _Linear(layer.name, "conv" if conv else "dense", codes, bits, scale, kernel, np.asarray(bias, np.float64),
                   has_bias, conv)


def _bn_op(layer, stage: int) -> _BatchNorm:
    if isinstance(layer, QuantBatchNormalization):
        gain, offset = layer.folded(layer.moving_mean, layer.moving_variance)
        cache = {}
        g = _weight_value(layer, "gain", gain, stage, cache)
        o = _weight_value(layer, "offset", offset, stage, cache)
    else:
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise UnsupportedModelError(f"layer {layer.name!r}: batch-norm over axis {layer.axis} is not supported; "
                                        "only the last axis")
        g = 1.0 / np.sqrt(np.asarray(layer.moving_variance, np.float64) + layer.epsilon)
        if layer.scale:
            g = g * np.asarray(layer.gamma, np.float64)
        o = -np.asarray(layer.moving_mean, np.float64) * g
        if layer.center:
            o = o + np.asarray(layer.beta, np.float64)
    mean = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), np.float64).reshape(-1)
    return _BatchNorm(layer.name, np.asarray(g, np.float64).reshape(-1), np.asarray(o, np.float64).reshape(-1), mean)


def _supported(layer) -> bool:
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return False
    return isinstance(layer, _IDENTITY_LAYERS + _SHAPE_LAYERS + _LINEAR_LAYERS + (
        keras.layers.ReLU, keras.layers.Activation, QuantActivation, QuantBatchNormalization,
        keras.layers.BatchNormalization))


def _read_ops(layers: list, quantize: bool, stage: int) -> list:
    for layer in layers:  # name an unsupported layer before complaining about anything else
        if not _supported(layer):
            raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}) is not supported by the "
                                        f"TFLite export; supported: {_SUPPORTED}")
    ops = []
    for layer in layers:
        quant = isinstance(layer, QuantLayer)
        if isinstance(layer, _IDENTITY_LAYERS):
            continue
        if isinstance(layer, _SHAPE_LAYERS):
            op = _Shape(layer)
            last = next((o for o in reversed(ops) if not isinstance(o, _Shape)), None)
            if quantize and _Shape.depthwise_pool(layer) and isinstance(last, _FakeQuant) and last.lo is not None:
                op.pool_range = dataclasses.replace(last, owner=layer.name)
            ops.append(op)
        elif isinstance(layer, keras.layers.ReLU):
            if layer.negative_slope != 0 or layer.threshold != 0 or layer.max_value not in (None, 6, 6.0):
                raise UnsupportedModelError(f"layer {layer.name!r} (ReLU): only plain ReLU and ReLU6 are supported")
            ops.append(_Act(layer.name, "relu" if layer.max_value is None else "relu6"))
        elif isinstance(layer, (keras.layers.Activation, QuantActivation)):
            kind = _activation(layer, layer.activation)
            ops += [_Act(layer.name, kind)] if kind else []
            if quant:
                ops += _data_fake_quant(layer, "output", quantize)
        elif isinstance(layer, _LINEAR_LAYERS):
            kind = _activation(layer, layer.activation)
            if quant and "input" in layer.quantizers:
                ops += _data_fake_quant(layer, "input", quantize)
            ops.append(_linear_op(layer, stage))
            ops += [_Act(layer.name, kind)] if kind else []
            if quant and "output" in layer.quantizers:
                ops += _data_fake_quant(layer, "output", quantize)
        else:  # batch-norm
            if quant and "input" in layer.quantizers:
                ops += _data_fake_quant(layer, "input", quantize)
            ops.append(_bn_op(layer, stage))
            if quant and "output" in layer.quantizers:
                ops += _data_fake_quant(layer, "output", quantize)
    return ops


def _fold_through(bn: _BatchNorm, rest: list) -> bool:
    """Fold ``bn`` into a dense layer reached through 'valid' average pooling and flatten ops, which commute with a
    per-channel affine (the average of ``g·x + o`` is ``g·avg(x) + o``; flatten tiles the channels over the rows)."""
    j = 0
    while j < len(rest) and isinstance(rest[j], _Shape) and (
            _Shape.depthwise_pool(rest[j].layer) or isinstance(rest[j].layer, keras.layers.Flatten)):
        j += 1
    if j == 0 or j == len(rest) or not isinstance(rest[j], _Linear):
        return False
    lin = rest[j]
    rows = lin.kernel.shape[0]
    if lin.kind != "dense" or lin.in_gain is not None or rows % len(bn.gain):
        return False
    reps = rows // len(bn.gain)
    gain, offset, mean = (np.tile(v, reps) for v in (bn.gain, bn.offset, bn.mean))
    lin.bias = lin.bias + offset @ lin.kernel
    lin.has_bias = True
    lin.in_gain, lin.in_mean = gain, mean
    return True


def _fold_batchnorm(ops: list, quantize: bool) -> list:
    """Fold each batch-norm into the linear op right before it (output side) or right after it (input side); one that
    cannot be folded stays a float affine op in float export, or in int8 export ahead of the first quantizer."""
    out = []
    for i, op in enumerate(ops):
        if not isinstance(op, _BatchNorm):
            out.append(op)
            continue
        prev = out[-1] if out else None
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if isinstance(prev, _Linear) and prev.out_gain is None:
            prev.out_gain = op.gain
            prev.bias = prev.bias * op.gain + op.offset
            prev.has_bias = True
        elif isinstance(nxt, _Linear) and nxt.in_gain is None and (nxt.conv is None or nxt.conv["padding"] == "valid"):
            spatial = tuple(range(nxt.kernel.ndim - 2))  # a conv kernel's spatial axes
            w = nxt.kernel.sum(axis=spatial) if spatial else nxt.kernel  # [in, out]
            nxt.bias = nxt.bias + op.offset @ w
            nxt.has_bias = True
            nxt.in_gain, nxt.in_mean = op.gain, op.mean
        elif _fold_through(op, ops[i + 1:]):
            pass
        elif not quantize or not any(isinstance(o, _FakeQuant) and o.lo is not None for o in out):
            out.append(_Affine(op.owner, op.gain, op.offset))
        else:
            why = ("it precedes a padded convolution" if isinstance(nxt, _Linear)
                   else "a non-linearity, quantizer or shape op separates them")
            raise UnsupportedModelError(f"batch-norm {op.owner!r} cannot be folded into an adjacent dense/conv layer "
                                        f"({why}); an int8 model can compute a batch-norm only folded into a "
                                        "dense/conv layer or in float before its input quantizer")
    return out


def _pool_before_affine(ops: list) -> list:
    """Move a float per-channel affine (``_Affine``) after the 'valid' average pooling that follows it: they commute,
    the affine then runs on fewer values, and the pooling stays in float (ahead of nothing the converter could
    quantize), so the model's first quantizer sees the pooled frames exactly as the Keras model averages them."""
    ops = list(ops)
    for i in range(len(ops) - 1):
        if (isinstance(ops[i], _Affine) and isinstance(ops[i + 1], _Shape) and ops[i + 1].pool_range is None
                and _Shape.depthwise_pool(ops[i + 1].layer)):
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
    return ops


@dataclasses.dataclass
class _Flatten:
    owner: str

    def apply(self, x, quantize):
        return tf.reshape(x, [tf.shape(x)[0], -1])


def _fold_pooling(ops: list) -> list:
    """``AveragePooling1D(p) → Flatten → dense`` becomes ``Flatten → dense`` over the un-pooled frames: each kernel
    row is repeated for the ``p`` frames it averaged, with the same integer codes and ``scale / p``. Exact (the int32
    accumulator sums what the float pool averaged), at the price of a kernel ``p`` times larger."""
    out, i = [], 0
    while i < len(ops):
        op = ops[i]
        window = ops[i:i + 3]
        if (len(window) == 3 and isinstance(op, _Shape) and isinstance(op.layer, keras.layers.AveragePooling1D)
                and op.layer.padding == "valid" and tuple(op.layer.strides) == tuple(op.layer.pool_size)
                and isinstance(window[1], _Shape) and isinstance(window[1].layer, keras.layers.Flatten)
                and isinstance(window[2], _Linear) and window[2].kind == "dense" and window[2].in_gain is None):
            p = int(op.layer.pool_size[0])
            frames, channels = op.layer.input.shape[1:]
            lin = window[2]
            pooled = lin.kernel.shape[0] // channels

            def expand(k, divide):
                k = np.repeat(k.reshape(pooled, channels, -1), p, axis=0) / (p if divide else 1)
                k = np.concatenate([k, np.zeros((frames - pooled * p,) + k.shape[1:], k.dtype)])
                return k.reshape(frames * channels, -1)

            lin.kernel = expand(lin.kernel, True)
            if lin.codes is not None:
                lin.codes, lin.scale = expand(lin.codes, False).astype(lin.codes.dtype), lin.scale / p
            out += [_Flatten(window[1].owner), lin]
            i += 3
            continue
        out.append(op)
        i += 1
    return out


def _check_int8_ready(model, ops: list) -> None:
    """Every linear op needs a kernel quantizer and a quantized input: list the layers that lack them."""
    missing, start = [], 0
    linear_idx = [i for i, op in enumerate(ops) if isinstance(op, _Linear)]
    if not linear_idx:
        raise UnsupportedModelError(f"model {model.name!r} has no dense or convolution layer to export")
    for i in linear_idx:
        segment = ops[start:i]
        if not any(isinstance(o, _FakeQuant) and o.lo is not None for o in segment):
            holes = [f"{o.owner} ({o.role})" for o in segment if isinstance(o, _FakeQuant)]
            missing += holes or [f"{ops[i].owner} (input)"]
        if ops[i].codes is None:
            missing.append(f"{ops[i].owner} (kernel)")
        start = i + 1
    if missing:
        raise UnsupportedModelError(
            f"model {model.name!r} is not a QAT model the int8 export can use; these layers lack the quantizers it "
            f"needs: {', '.join(dict.fromkeys(missing))}. Build it with a quantization recipe (e.g. 'tanh4') and "
            "train it into stage 2, or export it in float (quantize=False / --float).")


# ------------------------------------------------------------------------------------------------------------
# The float graph and the converter.
# ------------------------------------------------------------------------------------------------------------
class _Graph(tf.Module):
    def __init__(self, ops, input_shape, quantize):
        super().__init__()
        self._ops, self._quantize = ops, quantize
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec(input_shape, tf.float32, "window")])

    def _serve(self, x):
        for op in self._ops:
            x = op.apply(x, self._quantize)
        return tf.identity(x, name="logits")


def _representative(representative_data, input_shape, ops) -> np.ndarray:
    if representative_data is not None:
        x = np.asarray(representative_data, np.float32)
        x = x[None] if x.ndim == len(input_shape) - 1 else x
        if tuple(x.shape[1:]) != tuple(input_shape[1:]) or len(x) == 0:
            raise ValueError(f"representative_data must be windows [n, {', '.join(map(str, input_shape[1:]))}], "
                             f"got shape {x.shape}")
        return x
    warnings.warn("to_tflite: no representative_data; the output (logit) range is calibrated on synthetic windows "
                  "drawn from the input quantizer's range. Pass real feature windows for a tighter range.",
                  stacklevel=3)
    first = next(o for o in ops if isinstance(o, _FakeQuant) and o.lo is not None)
    mid, half = (first.lo + first.hi) / 2, (first.hi - first.lo) / 2
    x = np.random.default_rng(0).normal(mid, half / 2, size=[256] + list(input_shape[1:]))
    return np.clip(x, first.lo, first.hi).astype(np.float32)


def _calibrate_output(ops, input_shape, data, margin: float) -> _FakeQuant:
    fn = _Graph(ops, [None] + list(input_shape[1:]), quantize=True).serve
    outs = np.concatenate([fn(tf.constant(data[i:i + 256])).numpy().ravel() for i in range(0, len(data), 256)])
    lo, hi = float(outs.min()), float(outs.max())
    span = max(hi - lo, 1e-6)
    lo, hi = min(lo - margin * span, 0.0), max(hi + margin * span, 0.0)
    return _FakeQuant("<model output>", "output", lo, hi)


def _convert(ops, input_shape, quantize: bool, io_dtype: str) -> bytes:
    graph = _Graph(ops, input_shape, quantize)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.serve.get_concrete_function()], graph)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if io_dtype == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return bytes(converter.convert())


# ------------------------------------------------------------------------------------------------------------
# Flatbuffer: read, patch, check.
# ------------------------------------------------------------------------------------------------------------
def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _load_object(path_or_bytes):
    from tensorflow.lite.tools import flatbuffer_utils as fu
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = path_or_bytes
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    return fu.convert_bytearray_to_object(bytearray(data))


def _op_name(m, op) -> str:
    code = m.operatorCodes[op.opcodeIndex]
    c = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(_schema().BuiltinOperator).items() if v == c), str(c))


def _tensor_values(m, t) -> np.ndarray:
    """A constant tensor's values; INT4 tensors are unpacked to int8 (two codes a byte, low nibble first)."""
    schema = _schema()
    raw = np.asarray(m.buffers[t.buffer].data, np.uint8)
    if t.type == schema.TensorType.INT4:
        lo, hi = (raw & 0xF).astype(np.int8), (raw >> 4).astype(np.int8)
        vals = np.stack([lo, hi], axis=-1).ravel()[:int(np.prod(t.shape))]
        return np.where(vals > 7, vals - 16, vals).astype(np.int8).reshape(t.shape)
    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
             schema.TensorType.FLOAT32: np.float32}[t.type]
    return np.frombuffer(raw.tobytes(), dtype).reshape(t.shape)


def _pack_int4(codes: np.ndarray) -> np.ndarray:
    flat = codes.astype(np.int16).ravel() & 0xF
    flat = np.append(flat, 0) if len(flat) % 2 else flat
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _set_quant(t, scale, axis=0):
    t.quantization.scale = [float(s) for s in np.asarray(scale, np.float32).ravel()]
    t.quantization.zeroPoint = [0] * len(t.quantization.scale)
    t.quantization.quantizedDimension = axis
    t.quantization.min = t.quantization.max = None


def _exact_grids(m, sg, found: list, ops: list) -> None:
    """Give the int8 activation tensors around each dense/conv op the Keras quantizers' own grids
    (``_FakeQuant.grid``), so the integer requantization multipliers are the ones the model (and
    :mod:`asr_ext.quant.nna`'s emulation) computes from them. Every activation tensor carrying the converter's version
    of such a grid (a RESHAPE or pooling keeps it) gets the exact one."""
    swap = {}
    for op, i in zip(found, [i for i, o in enumerate(ops) if isinstance(o, _Linear)]):
        before = next((o for o in reversed(ops[:i]) if isinstance(o, _FakeQuant)), None)
        after = next((o for o in ops[i + 1:] if not isinstance(o, _Act)), None)
        for t, fq in ((op.inputs[0], before), (op.outputs[0], after)):
            q = sg.tensors[t].quantization
            if isinstance(fq, _FakeQuant) and fq.grid is not None and q is not None and q.scale is not None:
                swap[(float(q.scale[0]), int(q.zeroPoint[0]))] = fq.grid
    for t in sg.tensors:
        q = t.quantization
        if q is None or q.scale is None or len(q.scale) != 1 or m.buffers[t.buffer].data is not None:
            continue  # not a per-tensor activation
        grid = swap.get((float(q.scale[0]), int(q.zeroPoint[0])))
        if grid is not None:
            q.scale, q.zeroPoint = [grid[0]], [grid[1]]


def _patch(tflite_bytes: bytes, ops: list, int4: bool, strip_names: bool) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils as fu

    schema = _schema()
    m = fu.convert_bytearray_to_object(bytearray(tflite_bytes))
    sg = m.subgraphs[0]
    linear_ops = [o for o in ops if isinstance(o, _Linear)]
    found = [op for op in sg.operators if _op_name(m, op) in _LINEAR_OPS]
    if len(found) != len(linear_ops):
        raise RuntimeError(f"the converter produced {len(found)} FULLY_CONNECTED/CONV_2D ops for {len(linear_ops)} "
                           "dense/conv layers; cannot match weights to layers")
    _exact_grids(m, sg, found, ops)
    for op, lin in zip(found, linear_ops):
        in_t, w_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
        if w_t.type != schema.TensorType.INT8 or in_t.type != schema.TensorType.INT8:
            raise RuntimeError(f"{lin.owner}: the converter did not produce an int8 op")
        codes, scale = lin.int8_weights()
        codes = np.moveaxis(codes, -1, 0)  # Keras [..., in, out] → TFLite [out, ..., in]
        if codes.size != int(np.prod(w_t.shape)):
            raise RuntimeError(f"{lin.owner}: kernel {codes.shape} does not fit TFLite filter {tuple(w_t.shape)}")
        codes = codes.reshape(w_t.shape)
        # the converter's own weights must be the same tensor up to its re-quantization
        mine = codes * scale.reshape((-1,) + (1,) * (codes.ndim - 1)).astype(np.float64)
        theirs_s = np.asarray(w_t.quantization.scale, np.float64).reshape((-1,) + (1,) * (codes.ndim - 1))
        theirs = _tensor_values(m, w_t).astype(np.float64) * theirs_s
        if np.max(np.abs(theirs - mine)) > 1.01 * theirs_s.max() + 1e-6 * np.abs(mine).max(initial=0):
            raise RuntimeError(f"{lin.owner}: the converter's weights do not match the layer's; cannot patch")
        if int4 and lin.exact and lin.bits <= 4 and _op_name(m, op) == "FULLY_CONNECTED" \
                and codes.min(initial=0) >= -8 and codes.max(initial=0) <= 7:
            m.buffers[w_t.buffer].data = _pack_int4(codes)
            w_t.type = schema.TensorType.INT4
        else:
            m.buffers[w_t.buffer].data = np.frombuffer(codes.astype(np.int8).tobytes(), np.uint8).copy()
        _set_quant(w_t, scale)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b_t = sg.tensors[op.inputs[2]]
            if b_t.type != schema.TensorType.INT32:
                raise RuntimeError(f"{lin.owner}: expected an int32 bias, got tensor type {b_t.type}")
            b_scale = float(in_t.quantization.scale[0]) * scale.astype(np.float64)
            b_codes = np.round(lin.int8_bias() / b_scale)
            if np.abs(b_codes).max(initial=0) >= 2 ** 31:
                raise RuntimeError(f"{lin.owner}: the bias overflows int32")
            m.buffers[b_t.buffer].data = np.frombuffer(b_codes.astype(np.int32).tobytes(), np.uint8).copy()
            _set_quant(b_t, b_scale)
        elif lin.has_bias and np.any(lin.bias != 0):
            raise RuntimeError(f"{lin.owner}: the converter dropped a non-zero bias")
    _per_tensor_where_uniform(m, sg)
    return _serialize(m, strip_names)


def _per_tensor_where_uniform(m, sg) -> None:
    """An int8 kernel whose channels all have one scale (a per-tensor quantizer with no folded BN; the pooling's
    depthwise conv) gets per-tensor parameters for its weights and bias: 12 bytes instead of 12 per channel. INT4
    kernels stay per channel, as XNNPACK takes them."""
    schema = _schema()
    for op in sg.operators:
        if _op_name(m, op) not in _LINEAR_OPS + ("DEPTHWISE_CONV_2D",):
            continue
        w_t = sg.tensors[op.inputs[1]]
        q = w_t.quantization
        if w_t.type != schema.TensorType.INT8 or q is None or q.scale is None or len(set(q.scale)) != 1:
            continue
        bias = [sg.tensors[op.inputs[2]]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else []
        for t in [w_t] + bias:
            if t.quantization is not None and t.quantization.scale is not None \
                    and len(set(t.quantization.scale)) == 1:
                t.quantization.scale, t.quantization.zeroPoint = t.quantization.scale[:1], [0]


def _shared_quantization_class():
    """``QuantizationParametersT`` whose ``Pack`` writes each distinct scale / zero-point vector once and lets every
    tensor that has it point there (flatbuffers allow shared vectors; LiteRT reads them as usual). One class per
    serialization: its cache holds the vectors' offsets in one builder. Per-channel int8 weights and their int32
    biases each need a zero-point vector as long as their scale vector (all zeros), so sharing saves ~8 bytes per
    output channel and tensor."""
    schema = _schema()

    class SharedQuantization(schema.QuantizationParametersT):
        vectors = {}  # (field, values) -> offset in the builder

        def Pack(self, builder):
            if self.details is not None or self.min is not None or self.max is not None:
                return super().Pack(builder)
            cache = SharedQuantization.vectors
            fields = {}
            for name, start, prepend in (("scale", schema.QuantizationParametersStartScaleVector,
                                          builder.PrependFloat32),
                                         ("zeroPoint", schema.QuantizationParametersStartZeroPointVector,
                                          builder.PrependInt64)):
                values = getattr(self, name)
                if values is None:
                    continue
                key = (name, tuple(values))
                if key not in cache:
                    start(builder, len(values))
                    for v in reversed(values):
                        prepend(v)
                    cache[key] = builder.EndVector()
                fields[name] = cache[key]
            schema.QuantizationParametersStart(builder)
            if "scale" in fields:
                schema.QuantizationParametersAddScale(builder, fields["scale"])
            if "zeroPoint" in fields:
                schema.QuantizationParametersAddZeroPoint(builder, fields["zeroPoint"])
            schema.QuantizationParametersAddDetailsType(builder, self.detailsType)
            schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
            return schema.QuantizationParametersEnd(builder)

    return SharedQuantization


def _serialize(m, strip_names: bool) -> bytes:
    """The flatbuffer of model object ``m``, with identical quantization vectors stored once; ``strip_names``
    drops the model description, the subgraph name and the names of all tensors but the inputs and outputs (the
    signature keeps its input/output names)."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    shared = _shared_quantization_class()
    for sg in m.subgraphs:
        keep = set(int(i) for i in sg.inputs) | set(int(i) for i in sg.outputs)
        for i, t in enumerate(sg.tensors):
            if t.quantization is not None:
                t.quantization.__class__ = shared
            if strip_names and i not in keep:
                t.name = None
        if strip_names:
            sg.name = None
    if strip_names:
        m.description = None
    return bytes(fu.convert_object_to_bytearray(m))


def read_linear_ops(path_or_bytes) -> list[dict]:
    """Every ``FULLY_CONNECTED``/``CONV_2D``/``DEPTHWISE_CONV_2D`` op of a ``.tflite``, in execution order.

    Each dict: ``op`` (name), ``weights`` (filter in TFLite layout ``[out, in]`` / ``[out, kh, kw, in]`` /
    ``[1, kh, kw, channels]``; INT4 tensors unpacked to int8), ``weight_type`` (``"INT8"``, ``"INT4"``,
    ``"FLOAT32"``), ``scale``/``zero_point`` (per channel, or one value for a per-tensor kernel; empty for float),
    ``bias`` (int32/float or ``None``), ``bias_scale``, ``input_scale``, ``input_zero_point``, ``output_scale``, ``output_zero_point``,
    ``fused_activation`` (``"NONE"``, ``"RELU"``, …).
    """
    schema = _schema()
    m = _load_object(path_or_bytes)
    sg = m.subgraphs[0]
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    act_names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}

    def q(t, field):
        v = getattr(t.quantization, field, None) if t.quantization is not None else None
        return np.asarray([] if v is None else v)

    out = []
    for op in sg.operators:
        name = _op_name(m, op)
        if name not in _LINEAR_OPS + ("DEPTHWISE_CONV_2D",):
            continue
        in_t, w_t, o_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.outputs[0]]
        b_t = sg.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        out.append({
            "op": name, "weights": _tensor_values(m, w_t), "weight_type": type_names.get(w_t.type, str(w_t.type)),
            "scale": q(w_t, "scale").astype(np.float32), "zero_point": q(w_t, "zeroPoint").astype(np.int64),
            "bias": None if b_t is None else _tensor_values(m, b_t),
            "bias_scale": np.asarray([], np.float32) if b_t is None else q(b_t, "scale").astype(np.float32),
            "input_scale": q(in_t, "scale").astype(np.float32), "input_zero_point": q(in_t, "zeroPoint"),
            "output_scale": q(o_t, "scale").astype(np.float32), "output_zero_point": q(o_t, "zeroPoint"),
            "fused_activation": act_names.get(getattr(op.builtinOptions, "fusedActivationFunction", 0), "NONE"),
        })
    return out


def _verify(data: bytes, ops: list) -> None:
    """Read the patched model back: the quantizers' codes and scales, pooling weights, and one invoke."""
    found = read_linear_ops(data)
    linear = [d for d in found if d["op"] in _LINEAR_OPS]
    for got, lin in zip(linear, [o for o in ops if isinstance(o, _Linear)]):
        codes, scale = lin.int8_weights()
        if not np.array_equal(got["weights"], np.moveaxis(codes, -1, 0).reshape(got["weights"].shape)):
            raise RuntimeError(f"{lin.owner}: exported weights differ from the quantizer's codes")
        if not np.array_equal(np.broadcast_to(got["scale"], scale.shape), scale):
            raise RuntimeError(f"{lin.owner}: exported scales differ from the quantizer's scales")
    pools = [d for d in found if d["op"] == "DEPTHWISE_CONV_2D"]
    for got, pool in zip(pools, [o for o in ops if isinstance(o, _Shape) and o.pool_range is not None]):
        value = got["weights"].astype(np.float64) * got["scale"].reshape(-1)
        if not np.allclose(value, 1.0 / pool.pool_size(), rtol=1e-6):
            raise RuntimeError(f"{pool.owner}: the pooling weights are not 1/{pool.pool_size()}")
    interp = make_interpreter(data)
    d = interp.get_input_details()[0]
    interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()


# ------------------------------------------------------------------------------------------------------------
# Public API.
# ------------------------------------------------------------------------------------------------------------
def to_tflite(model, path, representative_data=None, *, quantize: bool = True, io_dtype: str = "auto",
              int4: bool = False, fold_pooling: bool = False, output_margin: float = 0.1,
              batch_size: int = 1, strip_names: bool = False, split_front_end: bool = False) -> str:
    """Export a Keras model to a ``.tflite`` file and return ``path``. Missing parent directories of ``path`` are
    created.

    With ``quantize=True`` (default) the model must be a stage-2 QAT model (:mod:`kws_quant.qat`): every dense/conv
    layer has a kernel quantizer, and the model input and each hidden activation have an 8-bit moving-average
    quantizer. The result has int8 ``FULLY_CONNECTED``/``CONV_2D`` ops whose weights are exactly the codes of
    ``layer.quantized_weights()``, with per-channel scales = the quantizer's scale × the gain of a batch-norm folded
    after it; a kernel with a batch-norm folded *before* it is re-quantized to int8 (module docstring).

    Args:
        model: a ``keras.Model`` that is a chain of supported layers, or the path of a ``.keras`` file.
        path: the ``.tflite`` to write; missing parent directories are created.
        representative_data: float windows ``[n, *window]`` (or one window), used only to calibrate the range of
            the model's output (logits), which has no quantizer in the Keras model. ``None``: synthetic windows from
            the input quantizer's range, with a warning. Ignored for float export.
        quantize: ``False`` writes the float32 model (the same folded graph without fake-quant): the baseline.
        io_dtype: int8 export only: ``"int8"`` (integer input/output tensors carrying the input quantizer's and the
            calibrated output's scale/zero point), ``"float32"`` (QUANTIZE/DEQUANTIZE ops at the edges), or
            ``"auto"``: int8, unless the model computes something in float before its input quantizer (a
            batch-norm normalising the raw features), which then runs inside the model ahead of QUANTIZE.
        int4: store the weights of dense layers whose kernel quantizer has ≤ 4 bits as packed INT4 tensors.
        fold_pooling: fold an ``AveragePooling1D → Flatten → dense`` into the dense layer (its kernel rows repeated
            over the pooled frames, same codes, scale / pool size). The int8 model then computes exactly what the
            Keras model computes up to the activations' and output's rounding, with a dense kernel ``pool`` times
            larger. Default: an int8 depthwise pooling that rounds the averages to the input grid.
        output_margin: widen the calibrated output range by this fraction of its span on each side.
        batch_size: fixed batch dimension of the input (1: one streaming window per invoke).
        strip_names: drop the names of the intermediate tensors, the subgraph and the model description (a few
            hundred bytes; the signature and the input/output names stay). Applies to float export too.
        split_front_end: move the leading per-frame layers (per-channel batch-norm, time pooling) out of the
            model into a :class:`~kws_quant.export.front_end.FrontEnd` written to ``<name>.front_end.json``
            (:mod:`kws_quant.export.front_end`): an int8 export then takes the int8 output of the input quantizer
            (``FrontEnd.apply(windows)``) and has no float ops; a float export takes the front end's float output.

    Raises:
        ValueError (:class:`UnsupportedModelError`): an unsupported layer (named) or topology; for int8 export, a
        model that lacks the quantizers int8 needs (the layers are listed) or is not in QAT stage 2.
    """
    if isinstance(model, (str, os.PathLike)):
        import kws_quant  # noqa: F401  (registers the quantized layers)
        model = keras.saving.load_model(model, compile=False)
    if io_dtype not in ("auto", "int8", "float32"):
        raise ValueError(f"io_dtype={io_dtype!r} is not allowed; allowed: 'auto', 'int8', 'float32'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not 0.0 <= output_margin <= 1.0:
        raise ValueError(f"output_margin={output_margin!r} must be in [0, 1]")
    layers = _chain(model)
    input_shape = [batch_size] + list(model.inputs[0].shape[1:])
    if any(d is None for d in input_shape):
        raise UnsupportedModelError(f"model {model.name!r} has input shape {tuple(model.inputs[0].shape)}; the "
                                    "export needs a fixed window shape")
    stage = qat.get_stage(model) if any(isinstance(layer, QuantLayer) for layer in layers) else None
    stage_used = 2 if stage is None else stage
    front = None
    if split_front_end:
        front, layers = _split_front_end(model, layers, stage_used)
        input_shape = [batch_size] + list(front.output_shape)
    ops = _pool_before_affine(_fold_batchnorm(_read_ops(layers, quantize, stage_used), quantize))
    if fold_pooling:
        before = len(ops)
        ops = _fold_pooling(ops)
        if len(ops) == before:
            raise UnsupportedModelError(f"fold_pooling=True, but model {model.name!r} has no AveragePooling1D → "
                                        "Flatten → dense (with strides = pool size) to fold; a pooling before the "
                                        "input quantizer runs in float and needs no folding")
    if quantize:
        _check_int8_ready(model, ops)
        if stage != 2:
            raise UnsupportedModelError(f"model {model.name!r} is in QAT stage {stage}; the int8 export needs stage 2 "
                                        "(inputs and activations quantized, with trained ranges). Train it through "
                                        "stage 2, or kws_quant.qat.set_stage(model, 2) if it was trained there.")
        ops = [o for o in ops if not (isinstance(o, _FakeQuant) and o.lo is None)]
        first = next(i for i, o in enumerate(ops) if isinstance(o, _FakeQuant))
        # what runs in float before the input quantizer; moving and max-pooling values commute with quantization,
        # averaging does not
        float_prefix = [o.owner for o in ops[:first] if not isinstance(o, _Shape) or _Shape.averages(o.layer)]
        if front is not None and float_prefix:
            raise UnsupportedModelError(f"split_front_end=True: {', '.join(float_prefix)} of model {model.name!r} "
                                        "run in float before the input quantizer but cannot move to the per-frame "
                                        "front end (it takes per-channel batch-norms and AveragePooling1D with "
                                        "strides = pool size, 'valid', at the start of the model)")
        if io_dtype == "auto":
            io_dtype = "float32" if float_prefix else "int8"
        elif io_dtype == "int8" and float_prefix:
            raise UnsupportedModelError(f"model {model.name!r} computes {', '.join(float_prefix)} in float before its "
                                        "input quantizer, so its int8 input would skip them; export with "
                                        "io_dtype='float32' (or 'auto'), which keeps them in the model")
        if not isinstance(ops[-1], _FakeQuant):
            if front is not None and representative_data is not None:
                representative_data = front.apply(representative_data)  # float: no grid yet
            data = _representative(representative_data, input_shape, ops)
            ops.append(_calibrate_output(ops, input_shape, data, output_margin))
    data = _convert(ops, input_shape, quantize, io_dtype)
    if quantize:
        data = _patch(data, ops, int4, strip_names)
        _verify(data, ops)
    elif strip_names:
        data = _serialize(_load_object(data), strip_names)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if front is not None:
        details = make_interpreter(data).get_input_details()[0]
        if details["dtype"] == np.int8:
            front.scale, front.zero_point = float(details["quantization"][0]), int(details["quantization"][1])
            front.narrow_range = bool(next(o for o in ops if isinstance(o, _FakeQuant)).narrow)
        front.save(front_end_path(path))
    return path


def _split_front_end(model, layers: list, stage: int):
    """``(FrontEnd, remaining layers)``: the leading per-frame layers of the chain (per-channel batch-norms with no
    input/output quantizer, 'valid' AveragePooling1D with strides = pool size) become front-end steps."""
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, (QuantBatchNormalization, keras.layers.BatchNormalization)) and not (
                isinstance(layer, QuantLayer) and ({"input", "output"} & set(layer.quantizers))):
            bn = _bn_op(layer, stage)
            steps.append({"op": "affine", "layer": layer.name, "gain": bn.gain.astype(np.float32).tolist(),
                          "offset": bn.offset.astype(np.float32).tolist()})
        elif (isinstance(layer, keras.layers.AveragePooling1D) and layer.padding == "valid"
              and layer.data_format == "channels_last" and tuple(layer.strides) == tuple(layer.pool_size)):
            steps.append({"op": "average_pool", "layer": layer.name, "size": int(layer.pool_size[0])})
        else:
            break
        i += 1
    out_shape = tuple(layers[i - 1].output.shape[1:]) if i else tuple(model.inputs[0].shape[1:])
    return FrontEnd(steps, tuple(model.inputs[0].shape[1:]), out_shape), layers[i:]


def to_tflite_float(model, path, *, batch_size: int = 1, strip_names: bool = False,
                    split_front_end: bool = False) -> str:
    """The float32 ``.tflite`` of ``model`` (the int8 export's folded graph, float weights); see :func:`to_tflite`."""
    return to_tflite(model, path, quantize=False, batch_size=batch_size, strip_names=strip_names,
                     split_front_end=split_front_end)


def make_interpreter(model, num_threads: int = 1, xnnpack: bool = True, reference: bool = False):
    """A LiteRT interpreter (``ai_edge_litert``; ``tf.lite`` if it is missing) for a ``.tflite`` path or bytes,
    with tensors allocated.

    Args:
        num_threads: CPU threads (1: the embedded setting).
        xnnpack: keep LiteRT's default XNNPACK delegate; ``False`` runs the builtin kernels only
            (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
        reference: the reference (unoptimized) builtin kernels (``BUILTIN_REF``), for debugging.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - ai-edge-litert is the [litert] extra
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    if reference:
        resolver = OpResolverType.BUILTIN_REF
    else:
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    kw = dict(num_threads=num_threads, experimental_op_resolver_type=resolver)
    if isinstance(model, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(model), **kw)
    else:
        interp = Interpreter(model_path=os.fspath(model), **kw)
    interp.allocate_tensors()
    return interp


def quantize_input(windows, scale: float, zero_point: int, narrow_range: bool = False) -> np.ndarray:
    """Float windows → int8 exactly as the Keras input quantizer rounds them
    (:func:`kws_quant.export.front_end.quantize_codes`: TF's fake-quant arithmetic, clamped to the nudged range)."""
    return quantize_codes(windows, scale, zero_point, narrow_range)


def run_tflite(model, windows, interpreter=None) -> np.ndarray:
    """Run a ``.tflite`` (path or bytes) on windows ``[n, *window]``, one batch per invoke; float outputs.

    Float windows for an int8 input are quantized with :func:`quantize_input`; int8 windows (e.g. a split
    export's ``FrontEnd.apply(windows)``) go in as they are. int8 outputs are dequantized, so int8 and float exports
    are called alike. ``interpreter``: reuse one from :func:`make_interpreter` (``model`` is then ignored).
    """
    interp = interpreter or make_interpreter(model)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = np.asarray(windows)
    codes = x.dtype == np.int8 and inp["dtype"] == np.int8
    x = x if codes else x.astype(np.float32)
    per_call = int(inp["shape"][0])
    if len(x) % per_call:
        raise ValueError(f"{len(x)} windows do not split into batches of {per_call}")
    results = []
    for i in range(0, len(x), per_call):
        chunk = x[i:i + per_call]
        if inp["dtype"] == np.int8 and not codes:
            chunk = quantize_input(chunk, *inp["quantization"])
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            s, z = out["quantization"]
            y = (y.astype(np.float32) - z) * np.float32(s)
        results.append(np.array(y, np.float32))
    return np.concatenate(results)


def output_grid(model) -> tuple[float, int]:
    """``(scale, zero_point)`` of an int8 ``.tflite``'s output (path or bytes); ``(0.0, 0)`` for a float model.

    For ``io_dtype="float32"`` it is the grid of the int8 tensor that the final DEQUANTIZE reads; the int8 output
    spans ``[(-128 - zero_point)·scale, (127 - zero_point)·scale]``.
    """
    m = _load_object(model)
    sg = m.subgraphs[0]
    t = sg.outputs[0]
    producer = next((op for op in sg.operators if t in list(op.outputs)), None)
    if producer is not None and _op_name(m, producer) == "DEQUANTIZE":
        t = producer.inputs[0]
    q = sg.tensors[t].quantization
    if q is None or q.scale is None or not len(q.scale):
        return 0.0, 0
    return float(q.scale[0]), int(q.zeroPoint[0])


def output_step(model) -> float:
    """The quantization step of an int8 ``.tflite``'s output (:func:`output_grid`); 0.0 for a float model."""
    return output_grid(model)[0]
