"""Small layers the RNN-T graph needs: time reduction, length bookkeeping and masking, the joint's broadcast sum,
the prediction network's input, masked multi-head attention, positional encoding, GLU, and a quantized depthwise
1-D convolution. All are weightless; every projection in the models is a quantized layer of
:mod:`kws_quant.layers` (``QuantDense``/``QuantConv1D``/``QuantLSTM``/``QuantDepthwiseConv1D``)."""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


_PKG = "asr_ext"


def reduced_length(lengths, factor: int):
    """Frames left after a time reduction by ``factor`` (pad to a multiple, then stack/stride): ``ceil(l / k)``."""
    if isinstance(lengths, (int, np.integer, np.ndarray, list, tuple)):
        return -(-np.asarray(lengths, np.int64) // int(factor))
    return (lengths + factor - 1) // factor


@keras.saving.register_keras_serializable(package=_PKG)
class FrameStack(keras.layers.Layer):
    """Time reduction by frame stacking: ``[B, T, F]`` → ``[B, ceil(T/k), k·F]`` (zero-padded to a multiple of k).
    Output frame ``j`` holds input frames ``jk .. jk+k-1``, so a right-padded batch stays right-padded."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"FrameStack: factor={factor!r} must be a positive integer")
        self.factor = factor

    def call(self, x):
        if self.factor == 1:
            return x
        k, f = self.factor, x.shape[-1]
        t = ops.shape(x)[1]
        x = ops.pad(x, [[0, 0], [0, (-t) % k], [0, 0]])
        return ops.reshape(x, (ops.shape(x)[0], -1, k * f))

    def compute_output_shape(self, input_shape):
        t = input_shape[1]
        return (input_shape[0], None if t is None else -(-t // self.factor), input_shape[2] * self.factor)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PKG)
class ReduceLengths(keras.layers.Layer):
    """``lengths [B]`` → ``ceil(lengths / factor)`` (the frame count after a time reduction by ``factor``)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, lengths):
        return reduced_length(ops.cast(lengths, "int32"), self.factor)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, lengths):
        return keras.KerasTensor(lengths.shape, dtype="int32")

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _time_mask(x, lengths):
    """``[B, T]`` bool: frame t of utterance b is real (``t < lengths[b]``)."""
    return ops.arange(ops.shape(x)[1])[None, :] < ops.cast(lengths, "int32")[:, None]


@keras.saving.register_keras_serializable(package=_PKG)
class SequenceMask(keras.layers.Layer):
    """``[x [B, T, C], lengths [B]]`` → ``x`` with the padding frames (``t >= lengths[b]``) set to zero."""

    def call(self, inputs):
        x, lengths = inputs
        return x * ops.cast(_time_mask(x, lengths), x.dtype)[:, :, None]

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


@keras.saving.register_keras_serializable(package=_PKG)
class PredictorInput(keras.layers.Layer):
    """Labels ``[B, U]`` (int) → the prediction network's input ``[B, U+1, V]``: one-hot of ``[blank, y_1 .. y_U]``
    (blank is the start symbol). The embedding is the following ``QuantDense`` (a quantized kernel like any other)."""

    def __init__(self, vocab_size: int, blank: int = 0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.vocab_size, self.blank = int(vocab_size), int(blank)

    def call(self, labels):
        labels = ops.cast(labels, "int32")
        start = ops.full((ops.shape(labels)[0], 1), self.blank, dtype="int32")
        return ops.one_hot(ops.concatenate([start, labels], axis=1), self.vocab_size, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        u = input_shape[1]
        return (input_shape[0], None if u is None else u + 1, self.vocab_size)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "blank": self.blank}


@keras.saving.register_keras_serializable(package=_PKG)
class JointCombine(keras.layers.Layer):
    """``[enc [B, T, J], pred [B, U1, J]]`` → ``enc[:, :, None] + pred[:, None]`` ``[B, T, U1, J]``."""

    def call(self, inputs):
        enc, pred = inputs
        return ops.expand_dims(enc, 2) + ops.expand_dims(pred, 1)

    def compute_output_shape(self, input_shapes):
        (b, t, j), (_, u1, _) = input_shapes
        return (b, t, u1, j)


@keras.saving.register_keras_serializable(package=_PKG)
class GLU(keras.layers.Layer):
    """Gated linear unit over the last axis: ``a · sigmoid(b)`` with ``[a, b]`` its two halves."""

    def call(self, x):
        a, b = ops.split(x, 2, axis=-1)
        return a * ops.sigmoid(b)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


@keras.saving.register_keras_serializable(package=_PKG)
class SinusoidalPosition(keras.layers.Layer):
    """``x + PE`` with the sinusoidal absolute position encoding of Vaswani et al. (2017)."""

    def call(self, x):
        d = x.shape[-1]
        pos = ops.cast(ops.arange(ops.shape(x)[1]), "float32")[:, None]
        inv = np.exp(-math.log(10000.0) * np.arange(0, d, 2, dtype=np.float32) / d)
        angle = pos * ops.convert_to_tensor(inv[None, :])
        pe = ops.reshape(ops.stack([ops.sin(angle), ops.cos(angle)], axis=-1), (-1, 2 * inv.shape[0]))[:, :d]
        return x + ops.cast(pe, x.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PKG)
class MaskedSelfAttention(keras.layers.Layer):
    """Scaled dot-product attention over ``num_heads`` heads, keys masked by length.

    Inputs ``[q, k, v, lengths]`` with ``q, k, v [B, T, D]`` (the outputs of quantized projections) → ``[B, T, D]``.
    Padding keys get no weight; padding queries produce values that a later ``SequenceMask`` discards.
    """

    def __init__(self, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def call(self, inputs):
        q, k, v, lengths = inputs
        d = q.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"MaskedSelfAttention: model width {d} is not divisible by num_heads={self.num_heads}")
        h, dh = self.num_heads, d // self.num_heads

        def heads(x):  # [B, T, D] -> [B, H, T, dh]
            return ops.transpose(ops.reshape(x, (ops.shape(x)[0], -1, h, dh)), (0, 2, 1, 3))

        scores = ops.matmul(heads(q), ops.transpose(heads(k), (0, 1, 3, 2))) / math.sqrt(dh)  # [B, H, Tq, Tk]
        key_ok = _time_mask(k, lengths)[:, None, None, :]
        scores = ops.where(key_ok, scores, ops.cast(-1e9, scores.dtype))
        out = ops.matmul(ops.softmax(scores, axis=-1), heads(v))
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (ops.shape(q)[0], -1, d))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}
