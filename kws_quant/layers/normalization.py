"""Batch normalization that quantizes its folded affine (METHODS §2)."""
from __future__ import annotations

import keras
from keras import initializers, ops

from kws_quant.layers.base import QuantLayer, pop_quantizer_specs

_ROLES = ("input", "gain", "offset", "output")


def replicas_in_sync() -> int:
    """Replicas of the current ``tf.distribute`` strategy (1 outside one, and on backends other than TensorFlow)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantBatchNormalization(QuantLayer):
    """``y = x · q(γ/√(σ²+ε)) + q(β - μ·γ/√(σ²+ε))`` over the last axis.

    In training ``μ, σ²`` are the batch moments (and the moving statistics are updated as in
    ``keras.layers.BatchNormalization``); at inference the moving statistics. Under a ``tf.distribute`` strategy with
    several replicas (mirrored, multi-worker) the moments are those of the global batch, synchronized across the
    replicas, so distributed training computes what one process with the same global batch computes. The folded gain and offset are what an
    export writes after folding batch-norm into the preceding layer.

    Args:
        momentum, epsilon, center, scale, *_initializer: as ``keras.layers.BatchNormalization`` (axis is -1).
        gain_quantizer, offset_quantizer, input_quantizer, output_quantizer: registry specs (``None``: float);
            8-bit linear per channel is the usual choice for gain and offset.
    """

    ROLES = _ROLES

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 **kwargs):
        axis = kwargs.pop("axis", -1)
        if axis != -1:
            raise ValueError(f"QuantBatchNormalization: axis={axis!r} is not supported; allowed: -1")
        super().__init__(pop_quantizer_specs(_ROLES, kwargs), **kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        c = (input_shape[-1],)
        kw = dict(shape=c, autocast=False)
        self.gamma = self.add_weight(name="gamma", initializer=self.gamma_initializer, **kw) if self.scale else None
        self.beta = self.add_weight(name="beta", initializer=self.beta_initializer, **kw) if self.center else None
        self.moving_mean = self.add_weight(name="moving_mean", initializer=self.moving_mean_initializer,
                                           trainable=False, **kw)
        self.moving_variance = self.add_weight(name="moving_variance", initializer=self.moving_variance_initializer,
                                               trainable=False, **kw)
        self.build_quantizers({"input": input_shape, "gain": c, "offset": c, "output": input_shape})

    def compute_output_shape(self, input_shape):
        return input_shape

    def folded(self, mean, variance):
        """``(gain, offset)`` of shape ``[channels]`` for the given statistics."""
        gain = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            gain = gain * self.gamma
        offset = -mean * gain
        if self.center:
            offset = offset + self.beta
        return gain, offset

    def call(self, inputs, training=None):
        x = ops.cast(self.quantize_role("input", inputs, training), "float32")
        if training and self.trainable:
            mean, variance = ops.moments(x, axes=tuple(range(len(x.shape) - 1)), synchronized=replicas_in_sync() > 1)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        gain, offset = self.folded(mean, variance)
        y = x * self.quantize_role("gain", gain, training) + self.quantize_role("offset", offset, training)
        return self.quantize_role("output", ops.cast(y, self.compute_dtype), training)

    def weight_tensors(self):
        gain, offset = self.folded(self.moving_mean, self.moving_variance)
        return {"gain": gain, "offset": offset}

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
        }
