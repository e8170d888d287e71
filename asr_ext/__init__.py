"""asr_ext: RNN-T speech recognition on the shared quantized layers, and the ASR quantization methods.

Importing it registers its quantizers (``lloyd_max``, ``gq``) in the shared :mod:`kws_quant.quantizers` registry and
its layers with Keras.
"""
import kws_quant  # noqa: F401  (Keras backend, shared layers and registry)
from asr_ext import quant  # noqa: F401,E402

__all__ = ["quant"]
