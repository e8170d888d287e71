"""Native integer QAT (METHODS §7; Ding et al. 2022): dense and 1-D conv layers whose forward is an int32 product.

Weights: symmetric per output channel at ``b_w ∈ {2..8}``: ``s_w[c] = max|W[..., c]| / (2^(b_w-1)-1)``,
``q_w = clip(round(W / s_w), ±(2^(b_w-1)-1))``. Activations (the layer input): symmetric per tensor at
``b_a ∈ {2..8}``: ``s_x = max|x| / (2^(b_a-1)-1)`` with ``max|x|`` the batch's (``act_range="dynamic"``) or a moving
average of batch min/max (``"ema"``, updated in training only, frozen at inference; before the first training batch
the batch's own max is used). ``round`` is half-to-even (``tf.round``), exactly as the ``linear`` quantizer, whose
``codes()`` therefore export the same integers.

Forward: ``acc = q_x · q_w`` computed by ``tf.matmul`` on **int32** tensors — exact integer arithmetic, whatever the
fan-in (``build`` raises if ``fan_in · q_max,x · q_max,w`` could overflow int32). A float32 matmul would be exact only
while every partial sum stays below 2^24 (8-bit × 4-bit: fan-in ≤ 18k; 8 × 8-bit: ≤ 1040) and depends on the BLAS
summation order, so it is not used. Then ``y = float32(acc) · (s_x · s_w)`` (scales in the "value = s · q"
convention; METHODS writes the same with inverse scales, ``acc / (s_x s_w)``). The 1-D convolution gathers
``[kernel_size · C_in]`` input patches (im2col) and uses the same int32 matmul.

Backward (``tf.custom_gradient``): the straight-through estimator, i.e. the gradients of the float operation on the
de-quantized tensors ``x̂ = s_x q_x``, ``Ŵ = s_w q_w``, with the input gradient zeroed where ``x`` was clipped
(only possible with EMA ranges). Scales get no gradient.

The integer path is on when the layer's ``qat_stage`` ≥ 1 (both the kernel and the input quantizer are stage-1
here); in stage 0 the layer is a float dense/conv. Bias (float by default, or ``bias_quantizer``), activation and
``output_quantizer`` work as in ``QuantDense``/``QuantConv1D``.

Mixed precision: :func:`to_native_int` converts a model's ``QuantDense``/``QuantConv1D`` layers matched by a map
``{layer-name pattern: (b_w, b_a)}``.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from asr_ext.quant import bits_map as bm
from asr_ext.quant.convert import clone_replacing
from kws_quant.layers import QuantConv1D, QuantDense
from kws_quant.quantizers.base import check_bits, check_choice
from kws_quant.quantizers.linear import LinearQuantizer

_EPS = 1e-8
_INT32_MAX = 2 ** 31 - 1
ACT_RANGES = ("dynamic", "ema")


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


class _NativeIntMixin:
    """The integer product, its STE gradient, scales and config, shared by the dense and conv layers."""

    _DERIVED = ("kernel_quantizer", "input_quantizer")

    def _native_kwargs(self, weight_bits, act_bits, act_range, ema_decay, kwargs):
        owner = type(self).__name__
        self.weight_bits = check_bits(f"{owner} weight_bits", weight_bits, 2, 8)
        self.act_bits = check_bits(f"{owner} act_bits", act_bits, 2, 8)
        check_choice(owner, "act_range", act_range, ACT_RANGES)
        self.act_range = act_range
        for key in self._DERIVED:  # written by get_config of the parent; derived from the bits here
            kwargs.pop(key, None)
        kwargs["kernel_quantizer"] = LinearQuantizer(bits=self.weight_bits, symmetric=True, per_channel=True,
                                                     range="current", stage=1)
        kwargs["input_quantizer"] = LinearQuantizer(bits=self.act_bits, symmetric=True, per_channel=False,
                                                    range="current" if act_range == "dynamic" else "ema",
                                                    ema_decay=ema_decay, stage=1)
        self.ema_decay = kwargs["input_quantizer"].ema_decay
        return kwargs

    def _check_overflow(self, fan_in):
        bound = int(fan_in) * qmax(self.act_bits) * qmax(self.weight_bits)
        if bound > _INT32_MAX:
            raise ValueError(f"{type(self).__name__} {self.name!r}: fan-in {fan_in} at {self.weight_bits}-bit "
                             f"weights and {self.act_bits}-bit activations can overflow the int32 accumulator "
                             f"(|acc| ≤ {bound} > 2^31-1)")

    # -- scales and codes --------------------------------------------------------------------------------------
    def act_scale(self, x):
        """``s_x`` (scalar float32, no gradient) from the batch max or the moving-average range."""
        st = self.quantizer_state("input")
        cur = ops.max(ops.abs(x))
        if st.get("ema"):
            ema = ops.maximum(ops.abs(st["min"]), ops.abs(st["max"]))
            cur = ops.where(ops.greater(st["seen"], 0.0), ema, cur)
        return ops.stop_gradient(ops.maximum(cur, _EPS) / float(qmax(self.act_bits)))

    def weight_scale(self, w):
        """``s_w`` per output channel (float32 ``(channels,)``, no gradient)."""
        axes = tuple(range(len(w.shape) - 1))
        return ops.stop_gradient(ops.maximum(ops.max(ops.abs(w), axis=axes), _EPS) / float(qmax(self.weight_bits)))

    def _codes(self, x, w, s_x, s_w):
        qa, qw = float(qmax(self.act_bits)), float(qmax(self.weight_bits))
        q_x = ops.clip(ops.round(x / s_x), -qa, qa)
        q_w = ops.clip(ops.round(w / s_w), -qw, qw)
        return q_x, q_w

    # -- the integer product with a straight-through gradient --------------------------------------------------
    def _native(self, inputs, kernel):
        x = ops.cast(inputs, "float32")
        w = ops.cast(kernel, "float32")
        s_x, s_w = self.act_scale(x), self.weight_scale(w)
        clip_at = s_x * float(qmax(self.act_bits))

        @tf.custom_gradient
        def product(x, w):
            q_x, q_w = self._codes(x, w, s_x, s_w)
            acc = self._int_op(tf.cast(q_x, tf.int32), tf.cast(q_w, tf.int32))
            y = tf.cast(acc, tf.float32) * (s_x * s_w)

            def grad(g):
                x_hat, w_hat = q_x * s_x, q_w * s_w
                with tf.GradientTape() as tape:
                    tape.watch([x_hat, w_hat])
                    y_hat = self._float_op(x_hat, w_hat)
                gx, gw = tape.gradient(y_hat, [x_hat, w_hat], output_gradients=g)
                return gx * tf.cast(tf.abs(x) <= clip_at, gx.dtype), gw

            return y, grad

        return ops.cast(product(x, w), self.compute_dtype)

    def integer_accumulator(self, inputs) -> dict:
        """The integer forward on ``inputs`` with the layer's current ranges (eager, NumPy out).

        Returns ``{"acc": int32 accumulator, "q_x": int32 input codes, "q_w": int32 weight codes, "s_x": float32,
        "s_w": float32 (channels,)}``; the layer's integer-path output before bias/activation is
        ``float32(acc) * (s_x * s_w)``.
        """
        x = ops.cast(ops.convert_to_tensor(inputs), "float32")
        w = ops.cast(ops.convert_to_tensor(self.kernel), "float32")
        s_x, s_w = self.act_scale(x), self.weight_scale(w)
        q_x, q_w = self._codes(x, w, s_x, s_w)
        acc = self._int_op(tf.cast(q_x, tf.int32), tf.cast(q_w, tf.int32))
        return {"acc": acc.numpy(), "q_x": tf.cast(q_x, tf.int32).numpy(), "q_w": tf.cast(q_w, tf.int32).numpy(),
                "s_x": np.float32(ops.convert_to_numpy(s_x)), "s_w": ops.convert_to_numpy(s_w).astype(np.float32)}

    def call(self, inputs, training=None):
        self.quantizers["input"].observe(inputs, self.quantizer_state("input"), bool(training))
        kernel = ops.convert_to_tensor(self.kernel)
        y = ops.cond(ops.greater_equal(self.qat_stage, 1),
                     lambda: self._native(inputs, kernel),
                     lambda: ops.cast(self._op(inputs, kernel), self.compute_dtype))
        if self.use_bias:
            y = ops.add(y, self.quantize_role("bias", self.bias, training))
        if self.activation is not None:
            y = self.activation(y)
        return self.quantize_role("output", y, training)

    def _native_config(self, config):
        for key in self._DERIVED:
            config.pop(key, None)
        return {**config, "weight_bits": self.weight_bits, "act_bits": self.act_bits, "act_range": self.act_range,
                "ema_decay": self.ema_decay}


@keras.saving.register_keras_serializable(package="asr_ext")
class NativeIntDense(_NativeIntMixin, QuantDense):
    """Dense layer with an exact int32 forward product (METHODS §7). Input ``[..., in]`` → ``[..., units]``.

    Args:
        units: output width.
        weight_bits: b_w, 2..8 (per-output-channel symmetric weights).
        act_bits: b_a, 2..8 (per-tensor symmetric input).
        act_range: ``"dynamic"`` (batch max) or ``"ema"`` (moving average of batch min/max, decay ``ema_decay``).
        bias_quantizer, output_quantizer, activation, use_bias, initializers…: as :class:`QuantDense`.
    """

    def __init__(self, units, weight_bits: int = 4, act_bits: int = 8, act_range: str = "dynamic",
                 ema_decay: float = 0.999, **kwargs):
        kwargs = self._native_kwargs(weight_bits, act_bits, act_range, ema_decay, kwargs)
        super().__init__(units, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self._check_overflow(input_shape[-1])

    def _int_op(self, x, w):
        shape = tf.shape(x)
        acc = tf.matmul(tf.reshape(x, [-1, shape[-1]]), w)
        return tf.reshape(acc, tf.concat([shape[:-1], [self.units]], 0))

    def _float_op(self, x, w):
        return self._int_op(x, w)  # the same graph on float tensors

    def get_config(self):
        return self._native_config(super().get_config())


@keras.saving.register_keras_serializable(package="asr_ext")
class NativeIntConv1D(_NativeIntMixin, QuantConv1D):
    """1-D convolution (``[batch, time, channels]``, padding valid/same/causal, strides, dilation) with an exact
    int32 forward product over im2col patches. Arguments as :class:`NativeIntDense` plus those of ``QuantConv1D``.
    """

    def __init__(self, filters, kernel_size, weight_bits: int = 4, act_bits: int = 8, act_range: str = "dynamic",
                 ema_decay: float = 0.999, **kwargs):
        kwargs = self._native_kwargs(weight_bits, act_bits, act_range, ema_decay, kwargs)
        super().__init__(filters, kernel_size, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self._check_overflow(self.kernel_size[0] * input_shape[-1])

    def _patches(self, x):
        """``[batch, time_out, kernel_size * channels]`` input patches (zero padding as the layer's ``padding``)."""
        k, d, s = self.kernel_size[0], self.dilation_rate[0], self.strides[0]
        span = d * (k - 1) + 1
        t = tf.shape(x)[1]
        if self.padding == "causal":
            left, right = span - 1, 0
        elif self.padding == "same":
            out = (t + s - 1) // s
            total = tf.maximum((out - 1) * s + span - t, 0)
            left, right = total // 2, total - total // 2
        else:
            left, right = 0, 0
        x = tf.pad(x, [[0, 0], [left, right], [0, 0]])
        t_out = (tf.shape(x)[1] - span) // s + 1
        idx = tf.range(t_out)[:, None] * s + tf.range(k)[None, :] * d  # [t_out, k]
        patches = tf.gather(x, idx, axis=1)  # [batch, t_out, k, channels]
        shape = tf.shape(patches)
        return tf.reshape(patches, [shape[0], shape[1], k * x.shape[-1]])

    def _int_op(self, x, w):
        p = self._patches(x)
        shape = tf.shape(p)
        acc = tf.matmul(tf.reshape(p, [-1, shape[-1]]), tf.reshape(w, [-1, self.filters]))
        return tf.reshape(acc, [shape[0], shape[1], self.filters])

    def _float_op(self, x, w):
        return self._int_op(x, w)

    def get_config(self):
        return self._native_config(super().get_config())


# -- mixed precision -------------------------------------------------------------------------------------------
def _bits_pair(name, value):
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"native-int precision map: layer {name!r} got {value!r}; expected (weight_bits, act_bits)")
    return (check_bits(f"native-int precision map, layer {name!r}, weight_bits", value[0], 2, 8),
            check_bits(f"native-int precision map, layer {name!r}, act_bits", value[1], 2, 8))


def resolve_precision(precision_map, layers) -> dict:
    """``{layer name: (b_w, b_a)}`` for the dense/conv1d layers a ``{pattern: (b_w, b_a)}`` map matches.

    ``layers``: a model (its ``QuantDense``/``QuantConv1D`` layers are the candidates) or a list of names. A single
    ``(b_w, b_a)`` pair applies to every candidate. Raises ``ValueError`` for a pattern matching no layer or bits
    outside 2..8.
    """
    if isinstance(layers, keras.layers.Layer):
        layers = [layer.name for layer in bm.kernel_layers(layers) if isinstance(layer, (QuantDense, QuantConv1D))]
    values = bm.resolve(precision_map, layers, what="native-int precision map")
    return {name: _bits_pair(name, v) for name, v in values.items()}


def to_native_int(model, precision_map, act_range: str = "dynamic", ema_decay: float = 0.999) -> keras.Model:
    """A copy of a Functional/Sequential ``model`` whose matched ``QuantDense``/``QuantConv1D`` layers are native-int.

    Args:
        model: built from ``kws_quant`` layers; its weights (and QAT stage, range statistics) are copied.
        precision_map: ``{layer-name pattern: (b_w, b_a)}`` (e.g. ``{"dense_in": (8, 8), "*": (4, 8)}``, the most
            specific pattern wins: :mod:`asr_ext.quant.bits_map`) or one pair for all such layers.
        act_range, ema_decay: the activation range of every converted layer.

    The converted layers keep their name, bias/output quantizers, activation and other arguments; their
    kernel/input quantizers are replaced by the native ones.
    """
    precision = resolve_precision(precision_map, model)

    def replace(layer):
        if layer.name not in precision or not isinstance(layer, (QuantDense, QuantConv1D)):
            return None
        b_w, b_a = precision[layer.name]
        cls = NativeIntDense if isinstance(layer, QuantDense) else NativeIntConv1D
        config = {k: v for k, v in layer.get_config().items()
                  if k not in ("weight_bits", "act_bits", "act_range", "ema_decay")}
        return cls.from_config({**config, "weight_bits": b_w, "act_bits": b_a, "act_range": act_range,
                                "ema_decay": ema_decay})

    return clone_replacing(model, replace)


__all__ = ["NativeIntConv1D", "NativeIntDense", "resolve_precision", "to_native_int"]
