"""The ``.tflite`` flatbuffer: reading, patching and writing it (``tensorflow.lite.tools.flatbuffer_utils``).

:func:`patch` writes the quantizers' exact int8/INT4 codes, scales and int32 biases over the converter's weights
(and the Keras quantizers' own activation grids); :func:`serialize` writes a model object back with identical
quantization vectors stored once. Reading: :func:`load_object`, :func:`op_name`, :func:`read_linear_ops`,
:func:`output_grid`, :func:`output_step`.
"""
from __future__ import annotations

import numpy as np

from kws_quant.export.tflite.ir import ActivationOp, FakeQuantOp, LinearOp

__all__ = ["LINEAR_OPS", "load_object", "op_name", "output_grid", "output_step", "pack_int4", "patch",
           "per_tensor_where_uniform", "read_linear_ops", "serialize", "set_quant", "tensor_values"]

LINEAR_OPS = ("FULLY_CONNECTED", "CONV_2D")
"""The builtin ops a dense/conv layer (:class:`~kws_quant.export.tflite.ir.LinearOp`) converts to."""


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def load_object(path_or_bytes):
    """The mutable model object (``ModelT``) of a ``.tflite`` path or bytes."""
    from tensorflow.lite.tools import flatbuffer_utils as fu
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = path_or_bytes
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    return fu.convert_bytearray_to_object(bytearray(data))


def op_name(m, op) -> str:
    """The builtin operator name (``"FULLY_CONNECTED"``, …) of operator ``op`` of model object ``m``."""
    code = m.operatorCodes[op.opcodeIndex]
    c = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(_schema().BuiltinOperator).items() if v == c), str(c))


def tensor_values(m, t) -> np.ndarray:
    """A constant tensor's values; INT4 tensors are unpacked to int8 (two codes a byte, low nibble first)."""
    schema = _schema()
    raw = np.asarray(m.buffers[t.buffer].data, np.uint8)
    if t.type == schema.TensorType.INT4:
        lo, hi = (raw & 0xF).astype(np.int8), (raw >> 4).astype(np.int8)
        vals = np.stack([lo, hi], axis=-1).ravel()[:int(np.prod(t.shape))]
        return np.where(vals > 7, vals - 16, vals).astype(np.int8).reshape(t.shape)
    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
             schema.TensorType.FLOAT32: np.float32}[t.type]
    return np.frombuffer(raw.tobytes(), dtype).reshape(t.shape)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Codes in [-8, 7] → LiteRT's INT4 buffer bytes: two a byte, low nibble first, in row-major order."""
    flat = codes.astype(np.int16).ravel() & 0xF
    flat = np.append(flat, 0) if len(flat) % 2 else flat
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def set_quant(t, scale, axis=0):
    t.quantization.scale = [float(s) for s in np.asarray(scale, np.float32).ravel()]
    t.quantization.zeroPoint = [0] * len(t.quantization.scale)
    t.quantization.quantizedDimension = axis
    t.quantization.min = t.quantization.max = None


def _exact_grids(m, sg, found: list, ops: list) -> None:
    """Give the int8 activation tensors around each dense/conv op the Keras quantizers' own grids
    (``FakeQuantOp.grid``), so the integer requantization multipliers are the ones the model (and
    :mod:`asr_ext.quant.nna`'s emulation) computes from them. Every activation tensor carrying the converter's version
    of such a grid (a RESHAPE or pooling keeps it) gets the exact one."""
    swap = {}
    for op, i in zip(found, [i for i, o in enumerate(ops) if isinstance(o, LinearOp)]):
        before = next((o for o in reversed(ops[:i]) if isinstance(o, FakeQuantOp)), None)
        after = next((o for o in ops[i + 1:] if not isinstance(o, ActivationOp)), None)
        for t, fq in ((op.inputs[0], before), (op.outputs[0], after)):
            q = sg.tensors[t].quantization
            if isinstance(fq, FakeQuantOp) and fq.grid is not None and q is not None and q.scale is not None:
                swap[(float(q.scale[0]), int(q.zeroPoint[0]))] = fq.grid
    for t in sg.tensors:
        q = t.quantization
        if q is None or q.scale is None or len(q.scale) != 1 or m.buffers[t.buffer].data is not None:
            continue  # not a per-tensor activation
        grid = swap.get((float(q.scale[0]), int(q.zeroPoint[0])))
        if grid is not None:
            q.scale, q.zeroPoint = [grid[0]], [grid[1]]


def patch(tflite_bytes: bytes, ops: list, int4: bool, strip_names: bool) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils as fu

    schema = _schema()
    m = fu.convert_bytearray_to_object(bytearray(tflite_bytes))
    sg = m.subgraphs[0]
    linear_ops = [o for o in ops if isinstance(o, LinearOp)]
    found = [op for op in sg.operators if op_name(m, op) in LINEAR_OPS]
    if len(found) != len(linear_ops):
        raise RuntimeError(f"the converter produced {len(found)} FULLY_CONNECTED/CONV_2D ops for {len(linear_ops)} "
                           "dense/conv layers; cannot match weights to layers")
    _exact_grids(m, sg, found, ops)
    for op, lin in zip(found, linear_ops):
        in_t, w_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
        if w_t.type != schema.TensorType.INT8 or in_t.type != schema.TensorType.INT8:
            raise RuntimeError(f"{lin.owner}: the converter did not produce an int8 op")
        codes, scale = lin.int8_weights()
        codes = np.moveaxis(codes, -1, 0)  # Keras [..., in, out] → TFLite [out, ..., in]
        if codes.size != int(np.prod(w_t.shape)):
            raise RuntimeError(f"{lin.owner}: kernel {codes.shape} does not fit TFLite filter {tuple(w_t.shape)}")
        codes = codes.reshape(w_t.shape)
        # the converter's own weights must be the same tensor up to its re-quantization
        mine = codes * scale.reshape((-1,) + (1,) * (codes.ndim - 1)).astype(np.float64)
        theirs_s = np.asarray(w_t.quantization.scale, np.float64).reshape((-1,) + (1,) * (codes.ndim - 1))
        theirs = tensor_values(m, w_t).astype(np.float64) * theirs_s
        if np.max(np.abs(theirs - mine)) > 1.01 * theirs_s.max() + 1e-6 * np.abs(mine).max(initial=0):
            raise RuntimeError(f"{lin.owner}: the converter's weights do not match the layer's; cannot patch")
        if int4 and lin.exact and lin.bits <= 4 and op_name(m, op) == "FULLY_CONNECTED" \
                and codes.min(initial=0) >= -8 and codes.max(initial=0) <= 7:
            m.buffers[w_t.buffer].data = pack_int4(codes)
            w_t.type = schema.TensorType.INT4
        else:
            m.buffers[w_t.buffer].data = np.frombuffer(codes.astype(np.int8).tobytes(), np.uint8).copy()
        set_quant(w_t, scale)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b_t = sg.tensors[op.inputs[2]]
            if b_t.type != schema.TensorType.INT32:
                raise RuntimeError(f"{lin.owner}: expected an int32 bias, got tensor type {b_t.type}")
            b_scale = float(in_t.quantization.scale[0]) * scale.astype(np.float64)
            b_codes = np.round(lin.int8_bias() / b_scale)
            if np.abs(b_codes).max(initial=0) >= 2 ** 31:
                raise RuntimeError(f"{lin.owner}: the bias overflows int32")
            m.buffers[b_t.buffer].data = np.frombuffer(b_codes.astype(np.int32).tobytes(), np.uint8).copy()
            set_quant(b_t, b_scale)
        elif lin.has_bias and np.any(lin.bias != 0):
            raise RuntimeError(f"{lin.owner}: the converter dropped a non-zero bias")
    per_tensor_where_uniform(m, sg)
    return serialize(m, strip_names)


def per_tensor_where_uniform(m, sg) -> None:
    """An int8 kernel whose channels all have one scale (a per-tensor quantizer with no folded BN; the pooling's
    depthwise conv) gets per-tensor parameters for its weights and bias: 12 bytes instead of 12 per channel. INT4
    kernels stay per channel, as XNNPACK takes them."""
    schema = _schema()
    for op in sg.operators:
        if op_name(m, op) not in LINEAR_OPS + ("DEPTHWISE_CONV_2D",):
            continue
        w_t = sg.tensors[op.inputs[1]]
        q = w_t.quantization
        if w_t.type != schema.TensorType.INT8 or q is None or q.scale is None or len(set(q.scale)) != 1:
            continue
        bias = [sg.tensors[op.inputs[2]]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else []
        for t in [w_t] + bias:
            if t.quantization is not None and t.quantization.scale is not None \
                    and len(set(t.quantization.scale)) == 1:
                t.quantization.scale, t.quantization.zeroPoint = t.quantization.scale[:1], [0]


def _shared_quantization_class():
    """``QuantizationParametersT`` whose ``Pack`` writes each distinct scale / zero-point vector once and lets every
    tensor that has it point there (flatbuffers allow shared vectors; LiteRT reads them as usual). One class per
    serialization: its cache holds the vectors' offsets in one builder. Per-channel int8 weights and their int32
    biases each need a zero-point vector as long as their scale vector (all zeros), so sharing saves ~8 bytes per
    output channel and tensor."""
    schema = _schema()

    class SharedQuantization(schema.QuantizationParametersT):
        vectors = {}  # (field, values) -> offset in the builder

        def Pack(self, builder):
            if self.details is not None or self.min is not None or self.max is not None:
                return super().Pack(builder)
            cache = SharedQuantization.vectors
            fields = {}
            for name, start, prepend in (("scale", schema.QuantizationParametersStartScaleVector,
                                          builder.PrependFloat32),
                                         ("zeroPoint", schema.QuantizationParametersStartZeroPointVector,
                                          builder.PrependInt64)):
                values = getattr(self, name)
                if values is None:
                    continue
                key = (name, tuple(values))
                if key not in cache:
                    start(builder, len(values))
                    for v in reversed(values):
                        prepend(v)
                    cache[key] = builder.EndVector()
                fields[name] = cache[key]
            schema.QuantizationParametersStart(builder)
            if "scale" in fields:
                schema.QuantizationParametersAddScale(builder, fields["scale"])
            if "zeroPoint" in fields:
                schema.QuantizationParametersAddZeroPoint(builder, fields["zeroPoint"])
            schema.QuantizationParametersAddDetailsType(builder, self.detailsType)
            schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
            return schema.QuantizationParametersEnd(builder)

    return SharedQuantization


def serialize(m, strip_names: bool) -> bytes:
    """The flatbuffer of model object ``m``, with identical quantization vectors stored once; ``strip_names``
    drops the model description, the subgraph name and the names of all tensors but the inputs and outputs (the
    signature keeps its input/output names)."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    shared = _shared_quantization_class()
    for sg in m.subgraphs:
        keep = set(int(i) for i in sg.inputs) | set(int(i) for i in sg.outputs)
        for i, t in enumerate(sg.tensors):
            if t.quantization is not None:
                t.quantization.__class__ = shared
            if strip_names and i not in keep:
                t.name = None
        if strip_names:
            sg.name = None
    if strip_names:
        m.description = None
    return bytes(fu.convert_object_to_bytearray(m))


def read_linear_ops(path_or_bytes) -> list[dict]:
    """Every ``FULLY_CONNECTED``/``CONV_2D``/``DEPTHWISE_CONV_2D`` op of a ``.tflite``, in execution order.

    Each dict: ``op`` (name), ``weights`` (filter in TFLite layout ``[out, in]`` / ``[out, kh, kw, in]`` /
    ``[1, kh, kw, channels]``; INT4 tensors unpacked to int8), ``weight_type`` (``"INT8"``, ``"INT4"``,
    ``"FLOAT32"``), ``scale``/``zero_point`` (per channel, or one value for a per-tensor kernel; empty for float),
    ``bias`` (int32/float or ``None``), ``bias_scale``, ``input_scale``, ``input_zero_point``, ``output_scale``,
    ``output_zero_point``, ``fused_activation`` (``"NONE"``, ``"RELU"``, …).
    """
    schema = _schema()
    m = load_object(path_or_bytes)
    sg = m.subgraphs[0]
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    act_names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}

    def q(t, field):
        v = getattr(t.quantization, field, None) if t.quantization is not None else None
        return np.asarray([] if v is None else v)

    out = []
    for op in sg.operators:
        name = op_name(m, op)
        if name not in LINEAR_OPS + ("DEPTHWISE_CONV_2D",):
            continue
        in_t, w_t, o_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.outputs[0]]
        b_t = sg.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        out.append({
            "op": name, "weights": tensor_values(m, w_t), "weight_type": type_names.get(w_t.type, str(w_t.type)),
            "scale": q(w_t, "scale").astype(np.float32), "zero_point": q(w_t, "zeroPoint").astype(np.int64),
            "bias": None if b_t is None else tensor_values(m, b_t),
            "bias_scale": np.asarray([], np.float32) if b_t is None else q(b_t, "scale").astype(np.float32),
            "input_scale": q(in_t, "scale").astype(np.float32), "input_zero_point": q(in_t, "zeroPoint"),
            "output_scale": q(o_t, "scale").astype(np.float32), "output_zero_point": q(o_t, "zeroPoint"),
            "fused_activation": act_names.get(getattr(op.builtinOptions, "fusedActivationFunction", 0), "NONE"),
        })
    return out



def output_grid(model) -> tuple[float, int]:
    """``(scale, zero_point)`` of an int8 ``.tflite``'s output (path or bytes); ``(0.0, 0)`` for a float model.

    For ``io_dtype="float32"`` it is the grid of the int8 tensor that the final DEQUANTIZE reads; the int8 output
    spans ``[(-128 - zero_point)·scale, (127 - zero_point)·scale]``.
    """
    m = load_object(model)
    sg = m.subgraphs[0]
    t = sg.outputs[0]
    producer = next((op for op in sg.operators if t in list(op.outputs)), None)
    if producer is not None and op_name(m, producer) == "DEQUANTIZE":
        t = producer.inputs[0]
    q = sg.tensors[t].quantization
    if q is None or q.scale is None or not len(q.scale):
        return 0.0, 0
    return float(q.scale[0]), int(q.zeroPoint[0])


def output_step(model) -> float:
    """The quantization step of an int8 ``.tflite``'s output (:func:`output_grid`); 0.0 for a float model."""
    return output_grid(model)[0]
