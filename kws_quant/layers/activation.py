"""Activation / input quantizer layer."""
from __future__ import annotations

import keras
from keras import activations

from kws_quant.layers.base import QuantLayer


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantActivation(QuantLayer):
    """``y = quantizer(activation(x))``: quantizes a model's input or a standalone activation.

    Args:
        activation: any Keras activation (``None``: identity), e.g. ``"relu"``.
        quantizer: registry spec for the output (role ``"output"``: moving-average ranges, stage 2 by default).
    """

    ROLES = ("output",)

    def __init__(self, activation=None, quantizer=None, **kwargs):
        kwargs.pop("output_quantizer", None)  # written by get_config; `quantizer` is the argument
        super().__init__({"output": quantizer}, **kwargs)
        self.activation = activations.get(activation)

    def build(self, input_shape):
        self.build_quantizers({"output": input_shape})

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, training=None):
        return self.quantize_role("output", self.activation(inputs), training)

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = config.pop("output_quantizer")
        return {**config, "activation": activations.serialize(self.activation)}
