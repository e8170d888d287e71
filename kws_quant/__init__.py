"""kws-quant: sub-8-bit quantization-aware training for on-device speech models (Keras 3, TensorFlow backend).

Importing the package registers its layers with Keras, so ``keras.saving.load_model`` reads our ``.keras`` files
without ``custom_objects``.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kws_quant import features, layers, qat, quantizers  # noqa: E402

__version__ = "0.1.0"
__all__ = ["features", "layers", "qat", "quantizers", "__version__"]
