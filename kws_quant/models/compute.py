"""Multiply-accumulates (MACs) of the weight layers: per window (the window model) and per streaming step.

Counts the products of dense, convolution, depthwise and LSTM weights with their inputs (what dominates on an ARM
CPU or an NNA); batch-norm folds into the preceding layer, activations and pooling are left out.
"""
from __future__ import annotations

import numpy as np

from kws_quant.layers import QuantConv1D, QuantConv2D, QuantDense, QuantDepthwiseConv1D, QuantLSTM


def layer_macs(layer, output_shape) -> int:
    """MACs of one call of ``layer`` producing ``output_shape`` (batch axis first, ignored); 0 for other layers."""
    out = [int(d) for d in output_shape[1:]]
    if isinstance(layer, QuantLSTM):
        frames = int(layer.input.shape[1])
        return frames * (int(np.prod(layer.kernel.shape)) + int(np.prod(layer.recurrent_kernel.shape)))
    if isinstance(layer, QuantDepthwiseConv1D):
        return int(np.prod(out)) * int(layer.kernel.shape[0])
    if isinstance(layer, (QuantConv1D, QuantConv2D, QuantDense)) or type(layer).__name__ in ("Dense", "Conv1D"):
        positions = int(np.prod(out[:-1])) if len(out) > 1 else 1
        return positions * int(np.prod(layer.kernel.shape))
    return 0


def window_macs(model) -> int:
    """MACs of one window (one call of the window model on ``[1, window_frames, n_mels]``)."""
    total = 0
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(shape, list):
            shape = shape[0]
        total += layer_macs(layer, shape)
    return total


def macs_per_second(model, hop_frames: int, hop_ms: float = 10.0) -> float:
    """MACs per second of audio when the window model re-runs every ``hop_frames`` frames."""
    return window_macs(model) * 1000.0 / (hop_frames * hop_ms)
