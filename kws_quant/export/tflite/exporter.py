"""The export pipeline (:func:`to_tflite`, :func:`to_tflite_float`): read the Keras model, rewrite, build the float
graph, convert, patch, verify, write; the steps are described in :mod:`kws_quant.export.tflite`."""
from __future__ import annotations

import os

import keras
import numpy as np

from kws_quant import qat
from kws_quant.export.front_end import features_dict, front_end_path
from kws_quant.export.tflite import flatbuffer, graph, passes, reader
from kws_quant.export.tflite.ir import FakeQuantOp, ShapeOp, UnsupportedModelError
from kws_quant.export.tflite.runtime import make_interpreter
from kws_quant.export.tflite.verify import verify_export
from kws_quant.layers import QuantLayer
from kws_quant.models.stream_state import is_streamable

__all__ = ["to_tflite", "to_tflite_float"]


def to_tflite(model, path, representative_data=None, *, quantize: bool = True, io_dtype: str = "auto",
              int4: bool = False, fold_pooling: bool = False, output_margin: float = 0.1,
              batch_size: int = 1, strip_names: bool = False, split_front_end: bool = False, features=None) -> str:
    """Export a Keras model to a ``.tflite`` file and return ``path``. Missing parent directories of ``path`` are
    created.

    With ``quantize=True`` (default) the model must be a stage-2 QAT model (:mod:`kws_quant.qat`): every dense/conv
    layer has a kernel quantizer, and the model input and each hidden activation have an 8-bit moving-average
    quantizer. The result has int8 ``FULLY_CONNECTED``/``CONV_2D`` ops whose weights are exactly the codes of
    ``layer.quantized_weights()``, with per-channel scales = the quantizer's scale × the gain of a batch-norm folded
    after it; a kernel with a batch-norm folded *before* it is re-quantized to int8 (:mod:`kws_quant.export.tflite`).

    Args:
        model: a ``keras.Model`` that is a chain of supported layers, or the path of a ``.keras`` file.
        path: the ``.tflite`` to write; missing parent directories are created.
        representative_data: float windows ``[n, *window]`` (or one window), used only to calibrate the range of
            the model's output (logits), which has no quantizer in the Keras model. ``None``: synthetic windows from
            the input quantizer's range, with a warning. Ignored for float export.
        quantize: ``False`` writes the float32 model (the same folded graph without fake-quant): the baseline.
        io_dtype: int8 export only: ``"int8"`` (integer input/output tensors carrying the input quantizer's and the
            calibrated output's scale/zero point), ``"float32"`` (QUANTIZE/DEQUANTIZE ops at the edges), or
            ``"auto"``: int8, unless the model computes something in float before its input quantizer (a
            batch-norm normalising the raw features), which then runs inside the model ahead of QUANTIZE.
        int4: store the weights of dense layers whose kernel quantizer has ≤ 4 bits as packed INT4 tensors.
        fold_pooling: fold an ``AveragePooling1D → Flatten → dense`` into the dense layer (its kernel rows repeated
            over the pooled frames, same codes, scale / pool size). The int8 model then computes exactly what the
            Keras model computes up to the activations' and output's rounding, with a dense kernel ``pool`` times
            larger. Default: an int8 depthwise pooling that rounds the averages to the input grid.
        output_margin: widen the calibrated output range by this fraction of its span on each side.
        batch_size: fixed batch dimension of the input (1: one streaming window per invoke).
        strip_names: drop the names of the intermediate tensors, the subgraph and the model description (a few
            hundred bytes; the signature and the input/output names stay). Applies to float export too.
        split_front_end: move the leading per-frame layers (per-channel batch-norm, time pooling) out of the
            model into a :class:`~kws_quant.export.front_end.FrontEnd` written to ``<name>.front_end.json``
            (:mod:`kws_quant.export.front_end`): an int8 export then takes the int8 output of the input quantizer
            (``FrontEnd.apply(windows)``) and has no float ops; a float export takes the front end's float output.
        features: with ``split_front_end``, the log-mel settings the windows are computed with
            (:class:`kws_quant.features.FeatureConfig` or its dict), written into the front-end file.

    Raises:
        ValueError (:class:`UnsupportedModelError`): an unsupported layer (named) or topology; for int8 export, a
        model that lacks the quantizers int8 needs (the layers are listed) or is not in QAT stage 2.
    """
    if isinstance(model, (str, os.PathLike)):
        import kws_quant  # noqa: F401  (registers the quantized layers)
        model = keras.saving.load_model(model, compile=False)
    if io_dtype not in ("auto", "int8", "float32"):
        raise ValueError(f"io_dtype={io_dtype!r} is not allowed; allowed: 'auto', 'int8', 'float32'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not 0.0 <= output_margin <= 1.0:
        raise ValueError(f"output_margin={output_margin!r} must be in [0, 1]")
    try:
        return _to_tflite(model, path, representative_data, quantize, io_dtype, int4, fold_pooling, output_margin,
                          batch_size, strip_names, split_front_end, features)
    except UnsupportedModelError as e:
        if is_streamable(model):
            raise UnsupportedModelError(f"{e}. Model {model.name!r} has a streaming form: export it with "
                                        "kws_quant.export.tflite.to_tflite_streaming") from None
        raise


def _to_tflite(model, path, representative_data, quantize, io_dtype, int4, fold_pooling, output_margin, batch_size,
               strip_names, split_front_end, features) -> str:
    layers = reader.read_chain(model)
    input_shape = [batch_size] + list(model.inputs[0].shape[1:])
    if any(d is None for d in input_shape):
        raise UnsupportedModelError(f"model {model.name!r} has input shape {tuple(model.inputs[0].shape)}; the "
                                    "export needs a fixed window shape")
    stage = qat.get_stage(model) if any(isinstance(layer, QuantLayer) for layer in layers) else None
    stage_used = 2 if stage is None else stage
    front = None
    if split_front_end:
        front, layers = reader.split_front_end(model, layers, stage_used)
        input_shape = [batch_size] + list(front.output_shape)
    ops = passes.pool_before_affine(passes.fold_batchnorm(reader.read_ops(layers, quantize, stage_used),
                                                         quantize))
    depthwise = [o.owner for o in ops if getattr(o, "kind", None) == "depthwise"]
    if depthwise:
        raise UnsupportedModelError(f"layer {depthwise[0]!r} (QuantDepthwiseConv1D): the chain export takes no "
                                    "depthwise convolutions; export the model's streaming form with "
                                    "kws_quant.export.tflite.to_tflite_streaming")
    if fold_pooling:
        before = len(ops)
        ops = passes.fold_pooling(ops)
        if len(ops) == before:
            raise UnsupportedModelError(f"fold_pooling=True, but model {model.name!r} has no AveragePooling1D → "
                                        "Flatten → dense (with strides = pool size) to fold; a pooling before the "
                                        "input quantizer runs in float and needs no folding")
    if quantize:
        passes.check_int8_ready(model, ops)
        if stage != 2:
            raise UnsupportedModelError(f"model {model.name!r} is in QAT stage {stage}; the int8 export needs stage 2 "
                                        "(inputs and activations quantized, with trained ranges). Train it through "
                                        "stage 2, or kws_quant.qat.set_stage(model, 2) if it was trained there.")
        ops = [o for o in ops if not (isinstance(o, FakeQuantOp) and o.lo is None)]
        first = next(i for i, o in enumerate(ops) if isinstance(o, FakeQuantOp))
        # what runs in float before the input quantizer; moving and max-pooling values commute with quantization,
        # averaging does not
        float_prefix = [o.owner for o in ops[:first] if not isinstance(o, ShapeOp) or ShapeOp.averages(o.layer)]
        if front is not None and float_prefix:
            raise UnsupportedModelError(f"split_front_end=True: {', '.join(float_prefix)} of model {model.name!r} "
                                        "run in float before the input quantizer but cannot move to the per-frame "
                                        "front end (it takes per-channel batch-norms and AveragePooling1D with "
                                        "strides = pool size, 'valid', at the start of the model)")
        if io_dtype == "auto":
            io_dtype = "float32" if float_prefix else "int8"
        elif io_dtype == "int8" and float_prefix:
            raise UnsupportedModelError(f"model {model.name!r} computes {', '.join(float_prefix)} in float before its "
                                        "input quantizer, so its int8 input would skip them; export with "
                                        "io_dtype='float32' (or 'auto'), which keeps them in the model")
        if not isinstance(ops[-1], FakeQuantOp):
            if front is not None and representative_data is not None:
                representative_data = front.apply(representative_data)  # float: no grid yet
            data = graph.representative_windows(representative_data, input_shape, ops)
            ops.append(graph.calibrate_output(ops, input_shape, data, output_margin))
    data = graph.convert(ops, input_shape, quantize, io_dtype)
    if quantize:
        data = flatbuffer.patch(data, ops, int4, strip_names)
        verify_export(data, ops)
    elif strip_names:
        data = flatbuffer.serialize(flatbuffer.load_object(data), strip_names)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if front is not None:
        details = make_interpreter(data).get_input_details()[0]
        if details["dtype"] == np.int8:
            front.scale, front.zero_point = float(details["quantization"][0]), int(details["quantization"][1])
            front.narrow_range = bool(next(o for o in ops if isinstance(o, FakeQuantOp)).narrow)
        front.features = features_dict(features)
        front.save(front_end_path(path))
    return path


def to_tflite_float(model, path, *, batch_size: int = 1, strip_names: bool = False,
                    split_front_end: bool = False) -> str:
    """The float32 ``.tflite`` of ``model`` (the int8 export's folded graph, float weights); see :func:`to_tflite`."""
    return to_tflite(model, path, quantize=False, batch_size=batch_size, strip_names=strip_names,
                     split_front_end=split_front_end)
