"""KWS models, quantization recipes and streaming."""
from kws_quant.models.kws_dnn import KWSModelConfig, build_kws_model
from kws_quant.models.recipes import PRESETS, RECIPE_PRESETS, get_recipe, spec_for, tanh_recipe
from kws_quant.models.streaming import StreamingRunner

__all__ = ["KWSModelConfig", "PRESETS", "RECIPE_PRESETS", "StreamingRunner", "build_kws_model", "get_recipe",
           "spec_for", "tanh_recipe"]
