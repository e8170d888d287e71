"""TFLite's int8 fixed-point arithmetic, on tf int64 tensors holding int32 values: ``QuantizeMultiplier``,
``MultiplyByQuantizedMultiplier`` (gemmlowp double rounding or ``TFLITE_SINGLE_ROUNDING``), gemmlowp's
``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``, and the 256-entry lookup tables of int8
``LOGISTIC``/``TANH``. Bit-exact in eager, graph and XLA mode; :mod:`asr_ext.quant.nna` emulates the int8 ops of an
export with it (``tests/test_nna.py`` checks it against LiteRT and NumPy references).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kws_quant.quantizers.base import check_choice

__all__ = ["INT8", "INT16", "INT32", "LUT_OUTPUT", "ROUNDINGS", "lut_lookup", "lut_table",
           "multiply_by_quantized_multiplier", "quantize_multiplier", "round_half_away", "rounding_divide_by_pot",
           "saturating_rounding_doubling_high_mul", "to_int64"]

INT8 = (-128, 127)
INT16 = (-(2 ** 15), 2 ** 15 - 1)
INT32 = (-(2 ** 31), 2 ** 31 - 1)
LUT_OUTPUT = {"sigmoid": (1.0 / 256, -128), "tanh": (1.0 / 128, 0)}
"""Output ``(scale, zero point)`` TFLite requires of int8 ``LOGISTIC`` / ``TANH``."""
ROUNDINGS = ("double", "single")
"""``MultiplyByQuantizedMultiplier`` variants: gemmlowp double rounding (TFLite's default, LiteRT's optimized int8
per-channel kernels) or ``TFLITE_SINGLE_ROUNDING`` (LiteRT's reference kernels in the pip build; XNNPACK agreed with
it in our runs, which ``tests/test_nna.py`` does not assert: its requantization depends on the CPU)."""


def to_int64(x):
    """``x`` as an int64 tensor (the arithmetic's carrier of int32 values)."""
    return tf.cast(x, tf.int64)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``round(a·b / 2^31)`` as int32 arithmetic does it (int64
    tensors in and out, broadcasting)."""
    a, b = to_int64(a), to_int64(b)
    ab = a * b
    nudge = tf.where(ab >= 0, tf.constant(1 << 30, tf.int64), tf.constant(1 - (1 << 30), tf.int64))
    high = tf.truncatediv(ab + nudge, tf.constant(1 << 31, tf.int64))
    overflow = tf.logical_and(tf.equal(a, b), tf.equal(a, INT32[0]))
    return tf.where(overflow, tf.constant(INT32[1], tf.int64), high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero (``exponent`` 0..31)."""
    x, exponent = to_int64(x), to_int64(exponent)
    mask = tf.bitwise.left_shift(tf.ones_like(exponent), exponent) - 1
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(x < 0, tf.int64)
    return tf.bitwise.right_shift(x, exponent) + tf.cast(remainder > threshold, tf.int64)


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding: str = "double"):
    """TFLite ``MultiplyByQuantizedMultiplier``: ``x · multiplier · 2^(shift-31)`` rounded, int64 out.

    ``x``: int32 values (any int dtype); ``multiplier`` (Q0.31, int32 values) and ``shift`` broadcast against it.
    ``rounding="double"``: gemmlowp's ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x · 2^max(shift, 0),
    M), max(-shift, 0))`` (TFLite's default; a left shift wraps around int32 as the C++ kernel does);
    ``"single"``: ``(x·M + 2^(30-shift)) >> (31-shift)`` (builds with ``TFLITE_SINGLE_ROUNDING``, ruy).
    """
    check_choice("multiply_by_quantized_multiplier", "rounding", rounding, ROUNDINGS)
    shift = to_int64(shift)
    if rounding == "single":
        total = 31 - shift
        return tf.bitwise.right_shift(to_int64(x) * to_int64(multiplier) + tf.bitwise.left_shift(
            tf.ones_like(total), total - 1), total)
    left = tf.maximum(shift, 0)
    x = to_int64(tf.cast(tf.bitwise.left_shift(to_int64(x), left), tf.int32))  # x * (1 << left) in int32
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), tf.maximum(-shift, 0))


def quantize_multiplier(real, rounding: str = "double"):
    """TFLite ``QuantizeMultiplier``: a positive float64 multiplier as ``(M, shift)``, int64 tensors, with
    ``real ≈ M · 2^(shift-31)``, ``M ∈ [2^30, 2^31)`` (``frexp`` by bit manipulation, ``round`` half away from zero;
    ``shift < -31`` flushes to ``(0, 0)``; with ``rounding="single"`` a shift above 30 saturates to
    ``(2^31-1, 30)``)."""
    real = tf.cast(real, tf.float64)
    bits = tf.bitcast(real, tf.int64)
    shift = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 52), 0x7FF) - 1022
    mantissa = tf.bitcast(tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(bits, (1 << 52) - 1), 1022 << 52), tf.float64)
    q = tf.cast(tf.floor(mantissa * 2.0 ** 31 + 0.5), tf.int64)
    carry = tf.equal(q, 1 << 31)
    q, shift = tf.where(carry, q // 2, q), tf.where(carry, shift + 1, shift)
    flush = tf.logical_or(shift < -31, real <= 0.0)
    q, shift = tf.where(flush, tf.zeros_like(q), q), tf.where(flush, tf.zeros_like(shift), shift)
    if rounding == "single":
        big = shift > 30
        q, shift = tf.where(big, tf.constant(INT32[1], tf.int64), q), tf.where(big, tf.constant(30, tf.int64), shift)
    return q, shift


def round_half_away(v):
    """C ``round`` (half away from zero) of float values, exact (float64)."""
    v = tf.cast(v, tf.float64)
    return tf.sign(v) * tf.floor(tf.abs(v) + 0.5)


# -- lookup tables --------------------------------------------------------------------------------------------------
def lut_table(kind: str, input_scale: float, input_zero_point: int) -> np.ndarray:
    """The 256-entry int8 table TFLite builds for int8 ``LOGISTIC`` (``kind="sigmoid"``) or ``TANH``
    (``LUTPopulate``): entry ``k`` is the output code of input code ``k - 128``, computed in float32 as the C++ code
    (``s_in·(q - z_in)``, ``1/(1+expf(-x))`` or ``tanhf``, ``round(t / s_out) + z_out``, clamped). Returns int32 [256].
    """
    if kind not in LUT_OUTPUT:
        raise ValueError(f"lut_table: kind={kind!r} is not allowed; allowed: {', '.join(map(repr, LUT_OUTPUT))}")
    out_scale, out_zp = LUT_OUTPUT[kind]
    x = np.float32(input_scale) * (np.arange(-128, 128) - int(input_zero_point)).astype(np.float32)
    if kind == "sigmoid":  # expf / tanhf: the float64 result rounded to float32
        t = np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float64)).astype(np.float32))
    else:
        t = np.tanh(x.astype(np.float64)).astype(np.float32)
    r = (t * np.float32(1 / out_scale)).astype(np.float64)
    return np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5) + out_zp, *INT8).astype(np.int32)


def lut_lookup(codes, table):
    """Apply a :func:`lut_table` to int8 codes (any int dtype, values -128..127); int64 out."""
    return to_int64(tf.gather(tf.constant(table, tf.int32), to_int64(codes) + 128))
