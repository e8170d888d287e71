"""Quantizers and the shared registry.

>>> from kws_quant import quantizers
>>> q = quantizers.get("tanh(bits=4, mode='symmetric')")
>>> quantizers.get(repr(q)) == q
True
"""
from kws_quant.quantizers.base import DATA_ROLES, WEIGHT_ROLES, CodebookCodes, IntegerCodes, Quantizer
from kws_quant.quantizers.registry import deserialize, get, register_quantizer, registered, serialize
from kws_quant.quantizers.tanh import TanhQuantizer
from kws_quant.quantizers.linear import LinearQuantizer

__all__ = [
    "CodebookCodes", "DATA_ROLES", "WEIGHT_ROLES", "IntegerCodes", "Quantizer", "TanhQuantizer", "LinearQuantizer",
    "deserialize", "get", "register_quantizer", "registered", "serialize",
]
