"""Quantized Keras 3 layers. Every layer takes registry specs per role; ``None`` means float."""
import keras

from kws_quant.layers.activation import QuantActivation
from kws_quant.layers.base import QuantLayer
from kws_quant.layers.linear_ops import QuantConv1D, QuantConv2D, QuantDense, QuantDepthwiseConv1D
from kws_quant.layers.normalization import QuantBatchNormalization
from kws_quant.layers.recurrent import QuantLSTM
from kws_quant.layers.weight_copy import all_layers, copy_weights

# .keras files written before these layers moved here from asr_ext (2026-12) name them "asr_ext>..."
keras.saving.get_custom_objects().update({"asr_ext>QuantLSTM": QuantLSTM,
                                          "asr_ext>QuantDepthwiseConv1D": QuantDepthwiseConv1D})


def quant_layers(model):
    """Every :class:`QuantLayer` inside ``model`` (nested models included), in order."""
    return [layer for layer in all_layers(model) if isinstance(layer, QuantLayer)]


__all__ = ["QuantActivation", "QuantBatchNormalization", "QuantConv1D", "QuantConv2D", "QuantDense",
           "QuantDepthwiseConv1D", "QuantLSTM", "QuantLayer", "all_layers", "copy_weights", "quant_layers"]
