"""Sub-8-bit QAT methods for speech models, as quantizers and callbacks in the shared ``kws_quant`` registry.

Importing this package registers the ``lloyd_max`` and ``gq`` quantizers (usable in any spec or recipe) and the
``asr_ext>NativeIntDense`` / ``asr_ext>NativeIntConv1D`` / ``asr_ext>NNADense`` / ``asr_ext>NNALSTM`` Keras layers
(needed to load ``.keras`` files using them).

- S8BQAT (METHODS §4-5): :func:`lloyd_max`, ``"lloyd_max(bits=, centroids=)"`` (:class:`LloydMaxQuantizer`),
  :func:`fit_centroids`, :func:`mracos`, :class:`MRACosWarmup`, :class:`HardCompressor`,
  :func:`compress_to_centroids`, :class:`CodebookCodes`.
- General Quantizer (METHODS §6): ``"gq(bits=)"`` (:class:`GeneralQuantizer`), :class:`TemperatureAnnealing`,
  :func:`set_gq_hard`, :func:`gq_recipe`.
- Native integer QAT (METHODS §7): :class:`NativeIntDense`, :class:`NativeIntConv1D`, :func:`to_native_int`.
- NNA operator emulation (METHODS §8): :class:`NNADense`, :class:`NNALSTM`, :func:`to_nna`, and TFLite's fixed-point
  primitives (:mod:`kws_quant.export.tflite.fixed_point`, also importable from :mod:`asr_ext.quant.nna`:
  ``quantize_multiplier``, ``multiply_by_quantized_multiplier``, ``lut_table``, …).
- Per-layer maps from layer-name patterns (:mod:`asr_ext.quant.bits_map`) and model conversion
  (:func:`with_quantizers`, :func:`copy_weights`).
"""
from asr_ext.quant import bits_map
from asr_ext.quant.codebook import CodebookCodes
from asr_ext.quant.convert import clone_replacing, copy_weights, with_quantizers
from asr_ext.quant.general_quantizer import (GeneralQuantizer, TemperatureAnnealing, gq_centroids, gq_recipe,
                                             gq_states, set_gq_hard, set_gq_temperature)
from asr_ext.quant.lloyd_max import lloyd_max, quantization_mse, snap_to_int8_grid, uniform_grids
from asr_ext.quant.native_int import NativeIntConv1D, NativeIntDense, resolve_precision, to_native_int
from asr_ext.quant.nna import NNADense, NNALSTM, to_nna
from asr_ext.quant.s8bqat import (NO_FLOAT_MODEL, HardCompressor, LloydMaxQuantizer, MRACosWarmup,
                                  compress_to_centroids, fit_centroids, lloyd_max_roles, mracos, set_mracos_lambda)

__all__ = [
    "NO_FLOAT_MODEL", "CodebookCodes", "GeneralQuantizer", "HardCompressor", "LloydMaxQuantizer", "MRACosWarmup",
    "NativeIntConv1D", "NativeIntDense", "NNADense", "NNALSTM", "TemperatureAnnealing", "bits_map", "clone_replacing",
    "compress_to_centroids", "copy_weights", "fit_centroids", "gq_centroids", "gq_recipe", "gq_states",
    "lloyd_max", "lloyd_max_roles", "mracos", "quantization_mse", "resolve_precision", "set_gq_hard",
    "set_gq_temperature", "set_mracos_lambda", "snap_to_int8_grid", "to_native_int", "to_nna", "uniform_grids",
    "with_quantizers",
]
