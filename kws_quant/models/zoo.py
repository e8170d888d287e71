"""Streaming convolutional and recurrent KWS models built from the quantized layers: DS-CNN, TC-ResNet, CRNN.

Every model maps a window ``[window_frames, n_mels]`` of log-mel frames to logits ``[num_classes]`` and is built so
that :func:`kws_quant.models.stream_state.to_streaming` can turn it into a frame-synchronous model with state:

- time runs along axis 1 and every temporal layer is causal-aligned: ``"valid"`` padding, time stride only in the
  first convolution (``dense_in``; its stride is the streaming *hop*, frames per step), dilations elsewhere;
- the window is cropped at its start so the last output frame ends exactly on the window's last frame;
- a residual branch's skip path is cropped at its start to the branch's length (``Cropping1D``);
- the head averages the remaining frames (``GlobalAveragePooling1D``) or reads the LSTM's last output.

Layer names (for recipe overrides): ``bn_in``, ``input_quant``, ``dense_in`` (the first linear layer, as in the DNN),
then per arch (``dw_<i>``/``pw_<i>``; ``conv_<i>a``/``conv_<i>b``/``proj_<i>``; ``conv_<i>``/``lstm``), ``bn_*`` and
``act_*`` after each, ``dense_out``. ``hidden`` (widths) by arch:

- ``dscnn``: ``(stem, block_1, ..., block_n)``: a ``kernel_size``-tap strided stem, then per block a depthwise
  ``kernel_size``-tap conv and a pointwise conv to ``block_i`` channels (Zhang et al. 2017, in 1-D over time).
- ``tcresnet``: ``(stem, block_1, ..., block_n)``: a 3-tap stem, then residual blocks of two 3-tap convs with
  dilation ``2**(i-1)`` and a 1x1 projection on the skip when the width changes (Choi et al. 2019, dilated instead
  of strided so it streams frame by frame).
- ``crnn``: ``(stem, conv_1, ..., units)``: a strided ``kernel_size``-tap stem, 3-tap convs, one LSTM of ``units``
  reading the whole window from a zero state; its last output feeds ``dense_out``.
"""
from __future__ import annotations

import functools

import keras

from kws_quant.layers import (QuantActivation, QuantBatchNormalization, QuantConv1D, QuantDepthwiseConv1D,
                              QuantLSTM)
from kws_quant.models.recipes import quantizer_kwargs, spec_for

ZOO_ARCHS = ("dscnn", "tcresnet", "crnn")

# Default widths and kernel sizes, each model near 200K parameters on 40 mels and 12 classes.
ARCH_DEFAULTS = {
    "dscnn": dict(hidden=(172, 172, 172, 172, 172, 172, 172), kernel_size=7),
    "tcresnet": dict(hidden=(64, 72, 96, 128), kernel_size=3),
    "crnn": dict(hidden=(128, 128, 128), kernel_size=5),
}


def stem_kernel(arch: str, kernel_size: int) -> int:
    """Taps of the first (strided) convolution."""
    return 3 if arch == "tcresnet" else kernel_size


def frames_consumed(arch: str, hidden: tuple, kernel_size: int, hop: int) -> tuple[int, int]:
    """``(stem_frames, after_stem)``: input frames the stem's first output reads, and the frames the layers after the
    stem consume per output (1 + the sum of their (taps - 1) x dilation) in stem frames."""
    if arch == "dscnn":
        after = 1 + (len(hidden) - 1) * (kernel_size - 1)
    elif arch == "tcresnet":
        after = 1 + sum(2 * 2 * 2 ** i for i in range(len(hidden) - 1))
    else:  # crnn: the convs between stem and LSTM
        after = 1 + 2 * (len(hidden) - 2)
    return stem_kernel(arch, kernel_size), after


def check_window(arch: str, window: int, hidden: tuple, kernel_size: int, hop: int) -> int:
    """Frames of the window the model reads (the cropped window); raises if the window is shorter than the receptive
    field of one output (``stem + hop x (after - 1)`` frames)."""
    stem, after = frames_consumed(arch, hidden, kernel_size, hop)
    field = stem + hop * (after - 1)
    if window < field:
        raise ValueError(f"model arch={arch!r}: window_frames={window} is shorter than the model's receptive field "
                         f"of {field} frames (hidden={tuple(hidden)}, kernel_size={kernel_size}, hop={hop}); use a "
                         "longer clip or fewer/narrower blocks")
    return window - (window - stem) % hop


def build_zoo_body(x, arch: str, hidden: tuple, kernel_size: int, hop: int, dropout: float, recipe: dict):
    """The layers after ``input_quant``: ``x [B, T, n_mels]`` (cropped window) → features ``[B, C]``."""

    q = functools.partial(quantizer_kwargs, recipe)  # q(layer name, *roles) -> <role>_quantizer kwargs

    def tail(x, suffix, relu=True):
        x = QuantBatchNormalization(name=f"bn_{suffix}", **q(f"bn_{suffix}", "gain", "offset"))(x)
        if relu:
            x = QuantActivation("relu", name=f"act_{suffix}", quantizer=spec_for(recipe, f"act_{suffix}",
                                                                                "output"))(x)
        return x

    def drop(x, suffix):
        return keras.layers.Dropout(dropout, name=f"dropout_{suffix}")(x) if dropout else x

    x = QuantConv1D(hidden[0], stem_kernel(arch, kernel_size), strides=hop, use_bias=False, name="dense_in",
                    **q("dense_in", "kernel"))(x)
    x = drop(tail(x, "0"), "0")
    if arch == "dscnn":
        for i, width in enumerate(hidden[1:], 1):
            x = QuantDepthwiseConv1D(kernel_size, padding="valid", use_bias=False, name=f"dw_{i}",
                                     **q(f"dw_{i}", "kernel"))(x)
            x = tail(x, f"dw_{i}")
            x = QuantConv1D(width, 1, use_bias=False, name=f"pw_{i}", **q(f"pw_{i}", "kernel"))(x)
            x = drop(tail(x, str(i)), str(i))
        return keras.layers.GlobalAveragePooling1D(name="pool")(x)
    if arch == "tcresnet":
        for i, width in enumerate(hidden[1:], 1):
            d = 2 ** (i - 1)
            y = QuantConv1D(width, 3, dilation_rate=d, use_bias=False, name=f"conv_{i}a",
                            **q(f"conv_{i}a", "kernel"))(x)
            y = tail(y, f"{i}a")
            y = QuantConv1D(width, 3, dilation_rate=d, use_bias=False, name=f"conv_{i}b",
                            **q(f"conv_{i}b", "kernel"))(y)
            y = tail(y, f"{i}b", relu=False)
            skip = keras.layers.Cropping1D((4 * d, 0), name=f"crop_{i}")(x)
            if skip.shape[-1] != width:
                skip = QuantConv1D(width, 1, use_bias=False, name=f"proj_{i}", **q(f"proj_{i}", "kernel"))(skip)
                skip = tail(skip, f"proj_{i}", relu=False)
            x = keras.layers.Add(name=f"add_{i}")([y, skip])
            x = QuantActivation("relu", name=f"act_{i}", quantizer=spec_for(recipe, f"act_{i}", "output"))(x)
            x = drop(x, str(i))
        return keras.layers.GlobalAveragePooling1D(name="pool")(x)
    for i, width in enumerate(hidden[1:-1], 1):
        x = QuantConv1D(width, 3, use_bias=False, name=f"conv_{i}", **q(f"conv_{i}", "kernel"))(x)
        x = drop(tail(x, str(i)), str(i))
    return QuantLSTM(hidden[-1], return_sequences=False, name="lstm",
                     **q("lstm", "kernel", "bias", "output"))(x)
