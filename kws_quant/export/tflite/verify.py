"""The check of a patched export before it is written: the quantizers' codes and scales, the pooling weights, and
one invoke."""
from __future__ import annotations

import numpy as np

from kws_quant.export.tflite.flatbuffer import LINEAR_OPS, read_linear_ops
from kws_quant.export.tflite.ir import LinearOp, ShapeOp
from kws_quant.export.tflite.runtime import make_interpreter

__all__ = ["verify_export"]


def verify_export(data: bytes, ops: list) -> None:
    """Read the patched model back: the quantizers' codes and scales, pooling weights, and one invoke."""
    found = read_linear_ops(data)
    linear = [d for d in found if d["op"] in LINEAR_OPS]
    for got, lin in zip(linear, [o for o in ops if isinstance(o, LinearOp)]):
        codes, scale = lin.int8_weights()
        if not np.array_equal(got["weights"], np.moveaxis(codes, -1, 0).reshape(got["weights"].shape)):
            raise RuntimeError(f"{lin.owner}: exported weights differ from the quantizer's codes")
        if not np.array_equal(np.broadcast_to(got["scale"], scale.shape), scale):
            raise RuntimeError(f"{lin.owner}: exported scales differ from the quantizer's scales")
    pools = [d for d in found if d["op"] == "DEPTHWISE_CONV_2D"]
    for got, pool in zip(pools, [o for o in ops if isinstance(o, ShapeOp) and o.pool_range is not None]):
        value = got["weights"].astype(np.float64) * got["scale"].reshape(-1)
        if not np.allclose(value, 1.0 / pool.pool_size(), rtol=1e-6):
            raise RuntimeError(f"{pool.owner}: the pooling weights are not 1/{pool.pool_size()}")
    interp = make_interpreter(data)
    d = interp.get_input_details()[0]
    interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()
