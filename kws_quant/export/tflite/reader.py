"""Reading a Keras model into the IR (:mod:`kws_quant.export.tflite.ir`).

:func:`read_chain` checks that the model is one chain of layers, :func:`read_ops` turns the layers into ops (the
quantizers' codes, scales and frozen ranges at a QAT stage; batch-norm gains and offsets), and
:func:`split_front_end` takes the leading per-frame layers off into a
:class:`~kws_quant.export.front_end.FrontEnd`.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kws_quant.export.front_end import FrontEnd
from kws_quant.export.storage_plan import is_per_frame
from kws_quant.export.tflite.ir import (ActivationOp, BatchNormOp, FakeQuantOp, LinearOp, LstmOp, ShapeOp,
                                        UnsupportedModelError)
from kws_quant.layers import (QuantActivation, QuantBatchNormalization, QuantConv1D, QuantConv2D, QuantDense,
                              QuantDepthwiseConv1D, QuantLayer)

__all__ = ["read_chain", "read_lstm", "read_ops", "split_front_end"]

_IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                    keras.layers.Identity)
_SHAPE_LAYERS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.AveragePooling1D,
                 keras.layers.AveragePooling2D, keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
                 keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                 keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding1D,
                 keras.layers.ZeroPadding2D)
_LINEAR_LAYERS = (QuantDense, QuantConv1D, QuantConv2D, QuantDepthwiseConv1D, keras.layers.Dense, keras.layers.Conv1D,
                  keras.layers.Conv2D)
_ACTIVATIONS = {keras.activations.linear: None, keras.activations.relu: "relu", keras.activations.relu6: "relu6"}
_SUPPORTED = ("QuantDense, QuantConv1D, QuantConv2D, QuantDepthwiseConv1D (streaming export), QuantBatchNormalization, QuantActivation (linear/relu/relu6), "
              "Dense/Conv1D/Conv2D/BatchNormalization/Activation/ReLU (float export), pooling, Flatten, Reshape, "
              "ZeroPadding, Dropout/noise")


def read_chain(model) -> list:
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
        return [FakeQuantOp(layer.name, role)]
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
    return [FakeQuantOp(layer.name, role, lo, hi, narrow=narrow, grid=grid)]


def _weight_value(layer, role: str, tensor, stage: int, cache: dict) -> np.ndarray:
    """The value the model uses for a weight role at ``stage`` (dequantized codes when its quantizer is on)."""
    if _role_on(layer, role, stage):
        if not cache:
            cache.update(layer.quantized_weights())
        return cache[role].dequantize().astype(np.float64)
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def _exact_codes(layer, role: str, ic) -> tuple[np.ndarray, np.ndarray]:
    """``(int codes [..., out], float64 scale [out])`` of a weight role's :class:`IntegerCodes` as a symmetric int8
    tensor stores them (a dorefa mid-rise grid as odd codes at half the scale)."""
    sc = np.asarray(ic.scale, np.float64)
    zp = np.broadcast_to(np.asarray(ic.zero_point, np.float64), sc.shape)
    if np.all(zp == 0):
        codes = ic.codes.astype(np.int64)
    elif np.allclose(2 * zp, np.round(2 * zp)) and np.all(np.round(2 * zp) % 2 == 1):
        # dorefa mid-rise grid: s·(n - (2^b-1)/2) = (s/2)·(2n - (2^b-1)): odd signed codes, half the scale
        codes = 2 * ic.codes.astype(np.int64) - np.round(2 * zp).astype(np.int64)
        sc = sc / 2.0
    else:
        raise UnsupportedModelError(f"layer {layer.name!r}: {role} quantizer {layer.quantizers[role]!r} has a "
                                    "non-zero zero point; int8 TFLite weights must be symmetric")
    if np.abs(codes).max(initial=0) > 127:
        raise UnsupportedModelError(f"layer {layer.name!r}: {role} codes reach ±{np.abs(codes).max()}, beyond "
                                    "int8's ±127")
    scale = np.broadcast_to(sc.reshape(-1) if sc.size > 1 else sc.reshape(()), (codes.shape[-1],)).copy()
    return codes, scale


def _linear_op(layer, stage: int) -> LinearOp:
    cache, codes, bits = {}, None, None
    if _role_on(layer, "kernel", stage):
        cache.update(layer.quantized_weights())
        codes, scale = _exact_codes(layer, "kernel", cache["kernel"])
        bits = layer.quantizers["kernel"].bits
        kernel = codes * scale
    else:
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)
        scale = np.ones(kernel.shape[-1])
    has_bias = bool(getattr(layer, "use_bias", False)) and getattr(layer, "bias", None) is not None
    bias = _weight_value(layer, "bias", layer.bias, stage, cache) if has_bias else np.zeros(kernel.shape[-1])
    conv = None
    if isinstance(layer, QuantDepthwiseConv1D):  # kernel [taps, channels]: per-channel scales on the last axis
        conv = dict(strides=(layer.strides,), padding=layer.padding, dilation_rate=(layer.dilation_rate,))
        return LinearOp(layer.name, "depthwise", codes, bits, scale, kernel, np.asarray(bias, np.float64), has_bias,
                        conv)
    if len(kernel.shape) > 2:
        if getattr(layer, "groups", 1) != 1 or getattr(layer, "data_format", "channels_last") != "channels_last":
            raise UnsupportedModelError(f"layer {layer.name!r}: grouped or channels_first convolutions are not "
                                        "supported")
        conv = dict(strides=tuple(layer.strides), padding=layer.padding, dilation_rate=tuple(layer.dilation_rate))
    return LinearOp(layer.name, "conv" if conv else "dense", codes, bits, scale, kernel, np.asarray(bias, np.float64),
                   has_bias, conv)


def read_lstm(layer, stage: int) -> LstmOp:
    """A stage-2 ``QuantLSTM`` (a streaming plan's ``lstm`` node) as an :class:`LstmOp` (a calibrated output grid, without a range yet, when the layer
    has no output quantizer)."""
    missing = [role for role in ("kernel", "recurrent_kernel") if not _role_on(layer, role, stage)]
    if missing:
        raise UnsupportedModelError(f"layer {layer.name!r} (QuantLSTM): no quantizer on {', '.join(missing)}; the "
                                    "int8 export writes the quantizers' codes. Build it with a quantization recipe "
                                    "(e.g. 'tanh4')")
    cache = dict(layer.quantized_weights())
    proj = {}
    for role in ("kernel", "recurrent_kernel"):
        codes, scale = _exact_codes(layer, role, cache[role])
        bias = _weight_value(layer, "bias", layer.bias, stage, cache) if role == "kernel" else np.zeros(len(scale))
        proj[role] = LinearOp(f"{layer.name}/{role}", "dense", codes, layer.quantizers[role].bits, scale,
                              codes * scale, np.asarray(bias, np.float64), role == "kernel", hybrid=True)
    input_q = _data_fake_quant(layer, "input", True) if "input" in layer.quantizers else []
    output = (_data_fake_quant(layer, "output", True) if "output" in layer.quantizers
              else [FakeQuantOp(layer.name, "calibrated")])
    return LstmOp(layer.name, int(layer.units), proj["kernel"], proj["recurrent_kernel"],
                  input_q[0] if input_q else None, output[0])


def _bn_op(layer, stage: int) -> BatchNormOp:
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
    return BatchNormOp(layer.name, np.asarray(g, np.float64).reshape(-1), np.asarray(o, np.float64).reshape(-1), mean)


def _supported(layer) -> bool:
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return False
    return isinstance(layer, _IDENTITY_LAYERS + _SHAPE_LAYERS + _LINEAR_LAYERS + (
        keras.layers.ReLU, keras.layers.Activation, QuantActivation, QuantBatchNormalization,
        keras.layers.BatchNormalization))


def read_ops(layers: list, quantize: bool, stage: int) -> list:
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
            op = ShapeOp(layer)
            last = next((o for o in reversed(ops) if not isinstance(o, ShapeOp)), None)
            if quantize and ShapeOp.depthwise_pool(layer) and isinstance(last, FakeQuantOp) and last.lo is not None:
                op.pool_range = dataclasses.replace(last, owner=layer.name)
            ops.append(op)
        elif isinstance(layer, keras.layers.ReLU):
            if layer.negative_slope != 0 or layer.threshold != 0 or layer.max_value not in (None, 6, 6.0):
                raise UnsupportedModelError(f"layer {layer.name!r} (ReLU): only plain ReLU and ReLU6 are supported")
            ops.append(ActivationOp(layer.name, "relu" if layer.max_value is None else "relu6"))
        elif isinstance(layer, (keras.layers.Activation, QuantActivation)):
            kind = _activation(layer, layer.activation)
            ops += [ActivationOp(layer.name, kind)] if kind else []
            if quant:
                ops += _data_fake_quant(layer, "output", quantize)
        elif isinstance(layer, _LINEAR_LAYERS):
            kind = _activation(layer, layer.activation)
            if quant and "input" in layer.quantizers:
                ops += _data_fake_quant(layer, "input", quantize)
            ops.append(_linear_op(layer, stage))
            ops += [ActivationOp(layer.name, kind)] if kind else []
            if quant and "output" in layer.quantizers:
                ops += _data_fake_quant(layer, "output", quantize)
        else:  # batch-norm
            if quant and "input" in layer.quantizers:
                ops += _data_fake_quant(layer, "input", quantize)
            ops.append(_bn_op(layer, stage))
            if quant and "output" in layer.quantizers:
                ops += _data_fake_quant(layer, "output", quantize)
    return ops



def split_front_end(model, layers: list, stage: int):
    """``(FrontEnd, remaining layers)``: the leading per-frame layers of the chain
    (:func:`kws_quant.export.storage_plan.is_per_frame`) become front-end steps."""
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if not is_per_frame(layer):
            break
        if isinstance(layer, keras.layers.AveragePooling1D):
            steps.append({"op": "average_pool", "layer": layer.name, "size": int(layer.pool_size[0])})
        else:
            bn = _bn_op(layer, stage)
            steps.append({"op": "affine", "layer": layer.name, "gain": bn.gain.astype(np.float32).tolist(),
                          "offset": bn.offset.astype(np.float32).tolist()})
        i += 1
    out_shape = tuple(layers[i - 1].output.shape[1:]) if i else tuple(model.inputs[0].shape[1:])
    return FrontEnd(steps, tuple(model.inputs[0].shape[1:]), out_shape), layers[i:]
