"""Rewrite passes over the IR (:mod:`kws_quant.export.tflite.ir`), run between reading and conversion.

:func:`fold_batchnorm` folds each batch-norm into an adjacent dense/conv op (or keeps it as a float affine op ahead
of the first quantizer), :func:`pool_before_affine` moves such an affine op after the average pooling that follows
it, :func:`fold_pooling` folds ``AveragePooling1D → Flatten → dense`` into the dense kernel, and
:func:`check_int8_ready` lists the layers that lack the quantizers an int8 export needs.
"""
from __future__ import annotations

import keras
import numpy as np

from kws_quant.export.tflite.ir import (AffineOp, BatchNormOp, FakeQuantOp, FlattenOp, LinearOp, ShapeOp,
                                        UnsupportedModelError)

__all__ = ["check_int8_ready", "fold_batchnorm", "fold_pooling", "pool_before_affine"]


def _fold_through(bn: BatchNormOp, rest: list) -> bool:
    """Fold ``bn`` into a dense layer reached through 'valid' average pooling and flatten ops, which commute with a
    per-channel affine (the average of ``g·x + o`` is ``g·avg(x) + o``; flatten tiles the channels over the rows)."""
    j = 0
    while j < len(rest) and isinstance(rest[j], ShapeOp) and (
            ShapeOp.depthwise_pool(rest[j].layer) or isinstance(rest[j].layer, keras.layers.Flatten)):
        j += 1
    if j == 0 or j == len(rest) or not isinstance(rest[j], LinearOp):
        return False
    lin = rest[j]
    rows = lin.kernel.shape[0]
    if lin.kind != "dense" or lin.in_gain is not None or rows % len(bn.gain):
        return False
    reps = rows // len(bn.gain)
    gain, offset, mean = (np.tile(v, reps) for v in (bn.gain, bn.offset, bn.mean))
    lin.bias = lin.bias + offset @ lin.kernel
    lin.has_bias = True
    lin.in_gain, lin.in_mean = gain, mean
    return True


def fold_batchnorm(ops: list, quantize: bool) -> list:
    """Fold each batch-norm into the linear op right before it (output side) or right after it (input side); one that
    cannot be folded stays a float affine op in float export, or in int8 export ahead of the first quantizer."""
    out = []
    for i, op in enumerate(ops):
        if not isinstance(op, BatchNormOp):
            out.append(op)
            continue
        prev = out[-1] if out else None
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if isinstance(prev, LinearOp) and prev.out_gain is None:
            prev.out_gain = op.gain
            prev.bias = prev.bias * op.gain + op.offset
            prev.has_bias = True
        elif isinstance(nxt, LinearOp) and nxt.in_gain is None and (nxt.conv is None or nxt.conv["padding"] == "valid"):
            spatial = tuple(range(nxt.kernel.ndim - 2))  # a conv kernel's spatial axes
            w = nxt.kernel.sum(axis=spatial) if spatial else nxt.kernel  # [in, out]
            nxt.bias = nxt.bias + op.offset @ w
            nxt.has_bias = True
            nxt.in_gain, nxt.in_mean = op.gain, op.mean
        elif _fold_through(op, ops[i + 1:]):
            pass
        elif not quantize or not any(isinstance(o, FakeQuantOp) and o.lo is not None for o in out):
            out.append(AffineOp(op.owner, op.gain, op.offset))
        else:
            why = ("it precedes a padded convolution" if isinstance(nxt, LinearOp)
                   else "a non-linearity, quantizer or shape op separates them")
            raise UnsupportedModelError(f"batch-norm {op.owner!r} cannot be folded into an adjacent dense/conv layer "
                                        f"({why}); an int8 model can compute a batch-norm only folded into a "
                                        "dense/conv layer or in float before its input quantizer")
    return out


def pool_before_affine(ops: list) -> list:
    """Move a float per-channel affine (``AffineOp``) after the 'valid' average pooling that follows it: they commute,
    the affine then runs on fewer values, and the pooling stays in float (ahead of nothing the converter could
    quantize), so the model's first quantizer sees the pooled frames exactly as the Keras model averages them."""
    ops = list(ops)
    for i in range(len(ops) - 1):
        if (isinstance(ops[i], AffineOp) and isinstance(ops[i + 1], ShapeOp) and ops[i + 1].pool_range is None
                and ShapeOp.depthwise_pool(ops[i + 1].layer)):
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
    return ops


def fold_pooling(ops: list) -> list:
    """``AveragePooling1D(p) → Flatten → dense`` becomes ``Flatten → dense`` over the un-pooled frames: each kernel
    row is repeated for the ``p`` frames it averaged, with the same integer codes and ``scale / p``. Exact (the int32
    accumulator sums what the float pool averaged), at the price of a kernel ``p`` times larger."""
    out, i = [], 0
    while i < len(ops):
        op = ops[i]
        window = ops[i:i + 3]
        if (len(window) == 3 and isinstance(op, ShapeOp) and isinstance(op.layer, keras.layers.AveragePooling1D)
                and op.layer.padding == "valid" and tuple(op.layer.strides) == tuple(op.layer.pool_size)
                and isinstance(window[1], ShapeOp) and isinstance(window[1].layer, keras.layers.Flatten)
                and isinstance(window[2], LinearOp) and window[2].kind == "dense" and window[2].in_gain is None):
            p = int(op.layer.pool_size[0])
            frames, channels = op.layer.input.shape[1:]
            lin = window[2]
            pooled = lin.kernel.shape[0] // channels

            def expand(k, divide):
                k = np.repeat(k.reshape(pooled, channels, -1), p, axis=0) / (p if divide else 1)
                k = np.concatenate([k, np.zeros((frames - pooled * p,) + k.shape[1:], k.dtype)])
                return k.reshape(frames * channels, -1)

            lin.kernel = expand(lin.kernel, True)
            if lin.codes is not None:
                lin.codes, lin.scale = expand(lin.codes, False).astype(lin.codes.dtype), lin.scale / p
            out += [FlattenOp(window[1].owner), lin]
            i += 3
            continue
        out.append(op)
        i += 1
    return out


def check_int8_ready(model, ops: list) -> None:
    """Every linear op needs a kernel quantizer and a quantized input: list the layers that lack them."""
    missing, start = [], 0
    linear_idx = [i for i, op in enumerate(ops) if isinstance(op, LinearOp)]
    if not linear_idx:
        raise UnsupportedModelError(f"model {model.name!r} has no dense or convolution layer to export")
    for i in linear_idx:
        segment = ops[start:i]
        if not any(isinstance(o, FakeQuantOp) and o.lo is not None for o in segment):
            holes = [f"{o.owner} ({o.role})" for o in segment if isinstance(o, FakeQuantOp)]
            missing += holes or [f"{ops[i].owner} (input)"]
        if ops[i].codes is None:
            missing.append(f"{ops[i].owner} (kernel)")
        start = i + 1
    if missing:
        raise UnsupportedModelError(
            f"model {model.name!r} is not a QAT model the int8 export can use; these layers lack the quantizers it "
            f"needs: {', '.join(dict.fromkeys(missing))}. Build it with a quantization recipe (e.g. 'tanh4') and "
            "train it into stage 2, or export it in float (quantize=False / --float).")
