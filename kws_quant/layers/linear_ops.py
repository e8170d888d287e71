"""Quantized dense and convolution layers: ``output_q(act(input_q(x) ⊛ kernel_q(W) + bias_q(b)))``."""
from __future__ import annotations

import keras
from keras import activations, constraints, initializers, ops, regularizers

from kws_quant.layers.base import QuantLayer, pop_quantizer_specs

_ROLES = ("input", "kernel", "bias", "output")


class _QuantLinearOp(QuantLayer):
    """Shared parts of dense and conv: kernel/bias variables, activation, quantizer roles."""

    ROLES = _ROLES

    def __init__(self, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(pop_quantizer_specs(_ROLES, kwargs), **kwargs)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

    def _build_params(self, input_shape, kernel_shape, channels):
        self.kernel = self.add_weight(name="kernel", shape=kernel_shape, initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, constraint=self.bias_constraint)
        out_shape = self.compute_output_shape(input_shape)
        self.build_quantizers({"input": input_shape, "kernel": kernel_shape, "bias": (channels,),
                               "output": out_shape})

    def _op(self, x, kernel):
        raise NotImplementedError

    def call(self, inputs, training=None):
        x = self.quantize_role("input", inputs, training)
        y = self._op(x, self.quantize_role("kernel", self.kernel, training))
        if self.use_bias:
            y = ops.add(y, self.quantize_role("bias", self.bias, training))
        if self.activation is not None:
            y = self.activation(y)
        return self.quantize_role("output", y, training)

    def weight_tensors(self):
        return {"kernel": self.kernel, **({"bias": self.bias} if self.use_bias else {})}

    def get_config(self):
        return {
            **super().get_config(),
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
        }


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantDense(_QuantLinearOp):
    """Dense layer with quantizers. Input ``[..., in]`` → output ``[..., units]``; kernel ``[in, units]``.

    Args:
        units: output width.
        kernel_quantizer, bias_quantizer, input_quantizer, output_quantizer: registry specs (``None``: float).
        Other arguments as ``keras.layers.Dense``.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self._build_params(input_shape, (input_shape[-1], self.units), self.units)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def _op(self, x, kernel):
        return ops.matmul(x, kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class _QuantConv(_QuantLinearOp):
    """N-d convolution, ``channels_last``. Kernel ``[*kernel_size, in, filters]``."""

    RANK = 0

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, **kwargs):
        data_format = kwargs.pop("data_format", "channels_last")
        if data_format != "channels_last":
            raise ValueError(f"{type(self).__name__}: data_format={data_format!r} is not supported; "
                             "allowed: 'channels_last'")
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = self._tuple(kernel_size, "kernel_size")
        self.strides = self._tuple(strides, "strides")
        self.dilation_rate = self._tuple(dilation_rate, "dilation_rate")
        allowed = ("valid", "same", "causal") if self.RANK == 1 else ("valid", "same")
        self.padding = str(padding).lower()
        if self.padding not in allowed:
            raise ValueError(f"{type(self).__name__}: padding={padding!r} is not allowed; allowed: {allowed}")

    def _tuple(self, value, name):
        t = (value,) * self.RANK if isinstance(value, int) else tuple(value)
        if len(t) != self.RANK or not all(isinstance(v, int) and v > 0 for v in t):
            raise ValueError(f"{type(self).__name__}: {name}={value!r} must be a positive int or {self.RANK} of them")
        return t

    def build(self, input_shape):
        self._build_params(input_shape, self.kernel_size + (input_shape[-1], self.filters), self.filters)

    def _op(self, x, kernel):
        padding = self.padding
        if padding == "causal":
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            x = ops.pad(x, [[0, 0], [left, 0], [0, 0]])
            padding = "valid"
        return ops.conv(x, kernel, strides=self.strides, padding=padding, dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        spatial = []
        for i, size in enumerate(input_shape[1:-1]):
            if size is None:
                spatial.append(None)
                continue
            span = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1
            if self.padding in ("same", "causal"):
                spatial.append(-(-size // self.strides[i]))
            else:
                spatial.append((size - span) // self.strides[i] + 1)
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantConv1D(_QuantConv):
    """1-D convolution with quantizers. Input ``[batch, time, channels]``; ``padding`` may be ``"causal"``."""

    RANK = 1


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantConv2D(_QuantConv):
    """2-D convolution with quantizers. Input ``[batch, height, width, channels]``."""

    RANK = 2


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantDepthwiseConv1D(_QuantLinearOp):
    """Depthwise 1-D convolution (one filter per channel, depth multiplier 1) with quantizers, ``channels_last``.

    Input ``[B, T, C]`` → ``[B, T', C]``; kernel ``[kernel_size, C]`` (per-channel quantizers use the last axis).
    Roles and arguments as ``QuantConv1D`` (``kernel``, ``bias``, ``input``, ``output``); ``padding`` is ``"same"``,
    ``"valid"`` or ``"causal"``; ``dilation_rate`` spaces the taps (with ``strides`` 1).
    """

    def __init__(self, kernel_size: int, strides: int = 1, padding: str = "same", dilation_rate: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.strides, self.dilation_rate = int(kernel_size), int(strides), int(dilation_rate)
        if min(self.kernel_size, self.strides, self.dilation_rate) < 1 or (self.strides > 1 and self.dilation_rate > 1):
            raise ValueError(f"QuantDepthwiseConv1D {self.name!r}: kernel_size={kernel_size!r}, strides={strides!r}, "
                             f"dilation_rate={dilation_rate!r} must be positive, and strides or dilation_rate 1")
        self.padding = str(padding).lower()
        if self.padding not in ("same", "valid", "causal"):
            raise ValueError(f"QuantDepthwiseConv1D: padding={padding!r} is not allowed; allowed: same, valid, causal")

    def build(self, input_shape):
        c = int(input_shape[-1])
        self._build_params(input_shape, (self.kernel_size, c), c)

    def _op(self, x, kernel):
        kernel = ops.cast(kernel, x.dtype)
        if self.strides > 1:
            return ops.depthwise_conv(x, kernel[:, :, None], strides=self.strides, padding=self.padding,
                                      dilation_rate=self.dilation_rate)
        # stride 1: a sum of k shifted, per-channel scaled copies (exact, and ~14x faster than XLA's depthwise
        # convolution on CPU in a training step)
        d, span = self.dilation_rate, self.dilation_rate * (self.kernel_size - 1)
        if self.padding == "causal":
            x = ops.pad(x, [[0, 0], [span, 0], [0, 0]])
        elif self.padding == "same":
            x = ops.pad(x, [[0, 0], [span // 2, span - span // 2], [0, 0]])
        frames = ops.shape(x)[1] - span
        y = x[:, :frames] * kernel[0]
        for j in range(1, self.kernel_size):
            y = y + x[:, j * d:j * d + frames] * kernel[j]
        return y

    def compute_output_shape(self, input_shape):
        t = input_shape[1]
        if t is not None:
            span = self.dilation_rate * (self.kernel_size - 1) + 1
            t = -(-t // self.strides) if self.padding in ("same", "causal") else (t - span) // self.strides + 1
        return (input_shape[0], t, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate}
