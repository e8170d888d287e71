"""Running ``.tflite`` files: a LiteRT interpreter (:func:`make_interpreter`), the int8 input quantization
(:func:`quantize_input`) and batched inference with float outputs (:func:`run_tflite`)."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from kws_quant.export.front_end import quantize_codes

__all__ = ["make_interpreter", "quantize_input", "run_tflite"]


def make_interpreter(model, num_threads: int = 1, xnnpack: bool = True, reference: bool = False):
    """A LiteRT interpreter (``ai_edge_litert``; ``tf.lite`` if it is missing) for a ``.tflite`` path or bytes,
    with tensors allocated.

    Args:
        num_threads: CPU threads (1: the embedded setting).
        xnnpack: keep LiteRT's default XNNPACK delegate; ``False`` runs the builtin kernels only
            (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
        reference: the reference (unoptimized) builtin kernels (``BUILTIN_REF``), for debugging.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - ai-edge-litert is the [litert] extra
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    if reference:
        resolver = OpResolverType.BUILTIN_REF
    else:
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    kw = dict(num_threads=num_threads, experimental_op_resolver_type=resolver)
    if isinstance(model, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(model), **kw)
    else:
        interp = Interpreter(model_path=os.fspath(model), **kw)
    interp.allocate_tensors()
    return interp


def quantize_input(windows, scale: float, zero_point: int, narrow_range: bool = False) -> np.ndarray:
    """Float windows → int8 exactly as the Keras input quantizer rounds them
    (:func:`kws_quant.export.front_end.quantize_codes`: TF's fake-quant arithmetic, clamped to the nudged range)."""
    return quantize_codes(windows, scale, zero_point, narrow_range)


def run_tflite(model, windows, interpreter=None) -> np.ndarray:
    """Run a ``.tflite`` (path or bytes) on windows ``[n, *window]``, one batch per invoke; float outputs.

    Float windows for an int8 input are quantized with :func:`quantize_input`; int8 windows (e.g. a split
    export's ``FrontEnd.apply(windows)``) go in as they are. int8 outputs are dequantized, so int8 and float exports
    are called alike. ``interpreter``: reuse one from :func:`make_interpreter` (``model`` is then ignored).
    """
    interp = interpreter or make_interpreter(model)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = np.asarray(windows)
    codes = x.dtype == np.int8 and inp["dtype"] == np.int8
    x = x if codes else x.astype(np.float32)
    per_call = int(inp["shape"][0])
    if len(x) % per_call:
        raise ValueError(f"{len(x)} windows do not split into batches of {per_call}")
    results = []
    for i in range(0, len(x), per_call):
        chunk = x[i:i + per_call]
        if inp["dtype"] == np.int8 and not codes:
            chunk = quantize_input(chunk, *inp["quantization"])
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            s, z = out["quantization"]
            y = (y.astype(np.float32) - z) * np.float32(s)
        results.append(np.array(y, np.float32))
    return np.concatenate(results)
