"""Codebook (non-uniform) codes and the nearest-centroid rule shared by S8BQAT and the General Quantizer.

Nearest centroid, everywhere in this package (NumPy and TensorFlow alike): with sorted centroids ``c_1 ≤ … ≤ c_K``
and float32 cell boundaries ``t_k = (c_k + c_{k+1}) / 2``, a value ``x`` goes to cell ``#{k : t_k < x}`` (a value
exactly on a boundary goes to the lower centroid). Both implementations use the same float32 boundaries, so they agree
bit for bit.
"""
from __future__ import annotations

import numpy as np
from keras import ops

from kws_quant.quantizers.base import CodebookCodes  # noqa: F401  (re-exported: asr_ext.quant.CodebookCodes)


def boundaries(centroids) -> np.ndarray:
    """Float32 cell boundaries ``(c_k + c_{k+1}) / 2`` of sorted centroids, shape ``(K-1,)``."""
    c = np.asarray(centroids, np.float32)
    return ((c[:-1] + c[1:]) * np.float32(0.5)).astype(np.float32)


def nearest_index_np(x, centroids) -> np.ndarray:
    """Index of the nearest centroid for every element of ``x`` (NumPy), same shape as ``x``, int64."""
    x = np.asarray(x, np.float32)
    return np.searchsorted(boundaries(centroids), x, side="left").astype(np.int64)


def nearest_index(x, bounds):
    """TensorFlow/Keras version of :func:`nearest_index_np` given ``bounds`` (a float tensor ``(K-1,)``): int32."""
    shape = ops.shape(x)
    flat = ops.reshape(x, (-1,))
    idx = ops.searchsorted(ops.cast(bounds, flat.dtype), flat, side="left")
    return ops.reshape(ops.cast(idx, "int32"), shape)


def make_codes(x, centroids, bits: int) -> CodebookCodes:
    """:class:`CodebookCodes` for ``x`` (NumPy) against sorted ``centroids``."""
    c = np.asarray(centroids, np.float32)
    idx = nearest_index_np(x, c)
    return CodebookCodes(idx.astype(np.uint8), c, int(bits))
