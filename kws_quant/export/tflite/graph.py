"""The float ``tf.function`` graph built from the IR, the output range calibration and the ``TFLiteConverter`` call.

:func:`convert` gives the converter's flatbuffer (int8 with ``quantize=True``: the fake-quant points make it a QAT
conversion), before :mod:`kws_quant.export.tflite.flatbuffer` patches the quantizers' exact codes into it.
"""
from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from kws_quant.export.tflite.ir import FakeQuantOp

__all__ = ["calibrate_output", "convert", "representative_windows"]


class _Graph(tf.Module):
    def __init__(self, ops, input_shape, quantize):
        super().__init__()
        self._ops, self._quantize = ops, quantize
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec(input_shape, tf.float32, "window")])

    def _serve(self, x):
        for op in self._ops:
            x = op.apply(x, self._quantize)
        return tf.identity(x, name="logits")


def representative_windows(representative_data, input_shape, ops) -> np.ndarray:
    """The windows that calibrate the output range: ``representative_data`` checked against the input shape, or
    (with a warning) synthetic windows drawn from the first quantizer's range."""
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
    first = next(o for o in ops if isinstance(o, FakeQuantOp) and o.lo is not None)
    mid, half = (first.lo + first.hi) / 2, (first.hi - first.lo) / 2
    x = np.random.default_rng(0).normal(mid, half / 2, size=[256] + list(input_shape[1:]))
    return np.clip(x, first.lo, first.hi).astype(np.float32)


def calibrate_output(ops, input_shape, data, margin: float) -> FakeQuantOp:
    """The model output's quantization point: the min/max of the fake-quant graph's outputs on ``data``, widened by
    ``margin`` of the span on each side (and to include 0)."""
    fn = _Graph(ops, [None] + list(input_shape[1:]), quantize=True).serve
    outs = np.concatenate([fn(tf.constant(data[i:i + 256])).numpy().ravel() for i in range(0, len(data), 256)])
    lo, hi = float(outs.min()), float(outs.max())
    span = max(hi - lo, 1e-6)
    lo, hi = min(lo - margin * span, 0.0), max(hi + margin * span, 0.0)
    return FakeQuantOp("<model output>", "output", lo, hi)


def convert(ops, input_shape, quantize: bool, io_dtype: str) -> bytes:
    """The converter's ``.tflite`` bytes for the graph of ``ops`` (int8 with ``quantize``, before patching)."""
    graph = _Graph(ops, input_shape, quantize)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.serve.get_concrete_function()], graph)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if io_dtype == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return bytes(converter.convert())
