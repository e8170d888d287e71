"""Quantized Keras 3 layers. Every layer takes registry specs per role; ``None`` means float."""
from kws_quant.layers.activation import QuantActivation
from kws_quant.layers.base import QuantLayer
from kws_quant.layers.linear_ops import QuantConv1D, QuantConv2D, QuantDense
from kws_quant.layers.normalization import QuantBatchNormalization


def quant_layers(model):
    """Every :class:`QuantLayer` inside ``model`` (nested models included), in order."""
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, QuantLayer)]


__all__ = ["QuantActivation", "QuantBatchNormalization", "QuantConv1D", "QuantConv2D", "QuantDense",
           "QuantLayer", "quant_layers"]
