"""Tanh non-linear weight quantizer (METHODS §1; Zeng et al. 2022 after DoReFa-Net)."""
from __future__ import annotations

import numpy as np
from keras import ops

from kws_quant.quantizers.base import (IntegerCodes, Quantizer, channel_vector, check_bits, check_choice,
                                       reduce_axes, ste)
from kws_quant.quantizers.registry import register_quantizer

_TINY = 1e-12


@register_quantizer
class TanhQuantizer(Quantizer):
    """``t = tanh(w) / sg(max|tanh(W)|)``, then a b-bit grid on ``t ∈ [-1, 1]``, times an output scale ``α``.

    Args:
        bits: 1..8 for ``mode="dorefa"``, 2..8 for ``mode="symmetric"``.
        mode: ``"dorefa"`` — mid-rise, 2^b levels, no zero: ``w_q = 2·round((2^b-1)(t+1)/2)/(2^b-1) - 1``
            (Larq's ``DoReFa(k_bit=b, mode="weights")``); ``"symmetric"`` — mid-tread, 2^b-1 levels with zero:
            ``w_q = round((2^(b-1)-1)·t)/(2^(b-1)-1)``, whose integer codes fit int8 for b ≤ 8.
        per_channel: normalise by the max over each output channel (last axis) instead of the whole tensor.
        output_scale: ``None`` (outputs in [-1, 1], DoReFa), ``"max"`` (``α = sg(max|W|)`` per tensor/channel, so
            the layer keeps its range) or a positive float constant.
        stage: two-stage QAT stage from which it is on (``None``: decided by the layer's role).

    Gradient: straight-through the rounding; tanh's derivative is kept; the max is under stop-gradient.
    Not idempotent (Q(Q(W)) ≠ Q(W)): exports store :meth:`codes`, never re-quantized weights.
    """

    name = "tanh"

    def __init__(self, bits: int = 4, mode: str = "dorefa", per_channel: bool = False,
                 output_scale: str | float | None = None, stage: int | None = None):
        check_choice("tanh", "mode", mode, ("dorefa", "symmetric"))
        low = 2 if mode == "symmetric" else 1
        why = "mode='symmetric' needs bits >= 2; use mode='dorefa' for 1 bit" if mode == "symmetric" else ""
        super().__init__(check_bits("tanh", bits, low, 8, why), stage)
        self.mode = mode
        self.per_channel = bool(per_channel)
        if not (output_scale is None or output_scale == "max"
                or (isinstance(output_scale, (int, float)) and not isinstance(output_scale, bool)
                    and output_scale > 0)):
            raise ValueError(f"tanh: output_scale={output_scale!r} is not allowed; "
                             "allowed: None, 'max' or a positive number")
        self.output_scale = output_scale

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits if self.mode == "dorefa" else 2 ** self.bits - 1

    def _grid(self, w):
        """Returns ``(t, n, alpha)``: normalised weights, integer-valued grid index, output scale."""
        axes = reduce_axes(w, self.per_channel)
        # max|tanh(W)| = tanh(max|W|) (tanh is odd and increasing): one reduction serves t and the output scale
        w_max = ops.stop_gradient(ops.max(ops.abs(w), axis=axes, keepdims=True))
        denom = ops.maximum(ops.tanh(w_max), _TINY)
        t = ops.tanh(w) / denom
        if self.mode == "dorefa":
            n = ops.round((2.0 ** self.bits - 1.0) * (t + 1.0) / 2.0)
        else:
            n = ops.round((2.0 ** (self.bits - 1) - 1.0) * t)
        if self.output_scale is None:
            alpha = ops.ones((), dtype=w.dtype)
        elif self.output_scale == "max":
            alpha = w_max
        else:
            alpha = ops.cast(self.output_scale, w.dtype)
        return t, n, alpha

    def fake_quant(self, x, state=None):
        t, n, alpha = self._grid(x)
        if self.mode == "dorefa":
            levels = 2.0 ** self.bits - 1.0
            t_q = 2.0 * n / levels - 1.0
        else:
            t_q = n / (2.0 ** (self.bits - 1) - 1.0)
        return alpha * ste(t, t_q)

    def codes(self, x, state=None) -> IntegerCodes:
        _, n, alpha = self._grid(ops.convert_to_tensor(x, "float32"))
        n = ops.convert_to_numpy(n).astype(np.int32)
        alpha = channel_vector(alpha)
        if self.mode == "dorefa":
            levels = 2 ** self.bits - 1
            scale = np.asarray(2.0 * alpha / levels, np.float32)
            zero_point = np.full_like(scale, levels / 2.0)
            return IntegerCodes(n, scale, zero_point, self.bits, signed=False)
        scale = np.asarray(alpha / (2 ** (self.bits - 1) - 1), np.float32)
        return IntegerCodes(n.astype(np.int8), scale, np.zeros_like(scale), self.bits, signed=True)
