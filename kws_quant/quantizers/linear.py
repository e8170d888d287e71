"""Linear (uniform) quantizer for inputs, activations, biases, gains and offsets (METHODS §2)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from kws_quant.quantizers.base import (WEIGHT_ROLES, IntegerCodes, Quantizer, channel_vector, check_bits,
                                       check_choice, reduce_axes, ste)
from kws_quant.quantizers.registry import register_quantizer

_EPS = 1e-8


def _div(x, d: float):
    """``x / d`` rounded once to ``x``'s dtype, identically in eager, graph and XLA mode. (There a division by a
    constant becomes a multiplication by its reciprocal, which differs in the last bit for most values; a float64
    quotient rounded to float32 is exactly the IEEE float32 quotient, rewritten or not.) Scales are thus the same in
    training, inference and export, which the integer requantization of an int8 model depends on."""
    return ops.cast(ops.divide(ops.cast(x, "float64"), d), x.dtype)


@register_quantizer
class LinearQuantizer(Quantizer):
    """Uniform b-bit quantizer with a straight-through gradient that is zero outside the clip range.

    - Symmetric: ``s = max|x| / (2^(b-1)-1)``, ``q = clip(round(x/s), ±(2^(b-1)-1))`` (2^b-1 levels, 0 exact).
    - Asymmetric (TFLite ``fake_quant_with_min_max_vars`` semantics): ``[min, max]`` widened to contain 0 and
      nudged so that 0 is exactly representable; 2^b levels.

    Args:
        bits: 2..8.
        symmetric: ``True``/``False``, or ``None`` to decide by role: symmetric for weights, biases and
            batch-norm gains/offsets, asymmetric for inputs and activations (TFLite's int8 scheme).
        per_channel: one range per channel of the last axis.
        range: where ``[min, max]`` comes from: ``"current"`` (the tensor's current value), ``"ema"`` (moving average
            of batch min/max, updated only in training, frozen at inference) or ``None`` (current for weights, EMA for
            data roles).
        ema_decay: decay of the moving average (TFMOT's default 0.999).
        stage: two-stage QAT stage from which it is on (``None``: decided by the layer's role).
    """

    name = "linear"

    def __init__(self, bits: int = 8, symmetric: bool | None = None, per_channel: bool = False,
                 range: str | None = None, ema_decay: float = 0.999, stage: int | None = None):
        super().__init__(check_bits("linear", bits, 2, 8), stage)
        check_choice("linear", "symmetric", symmetric, (None, True, False))
        check_choice("linear", "range", range, (None, "current", "ema"))
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"linear: ema_decay={ema_decay!r} is not allowed; allowed: a number in [0, 1)")
        self.symmetric = symmetric
        self.per_channel = bool(per_channel)
        self.range = range
        self.ema_decay = float(ema_decay)

    @property
    def num_levels(self) -> int:
        """``2^b - 1`` symmetric, ``2^b`` asymmetric; with ``symmetric=None`` (decided by role) the larger, ``2^b``
        (:meth:`levels_for` gives a role's own count)."""
        return 2 ** self.bits - 1 if self.symmetric else 2 ** self.bits

    def levels_for(self, role: str | None) -> int:
        """Distinct values of a tensor in ``role`` (``None``: a weight), after resolving ``symmetric=None``."""
        return 2 ** self.bits - 1 if self.resolve(role)["symmetric"] else 2 ** self.bits

    # -- state --------------------------------------------------------------------------------------------
    def resolve(self, role: str | None) -> dict:
        """Role-dependent choices: ``{"symmetric": bool, "ema": bool}``. ``role=None`` means a weight."""
        is_weight = role is None or role in WEIGHT_ROLES
        symmetric = is_weight if self.symmetric is None else self.symmetric
        ema = (not is_weight) if self.range is None else self.range == "ema"
        return {"symmetric": symmetric, "ema": ema}

    def build(self, layer, shape, role):
        state = self.resolve(role)
        if state["ema"]:
            rshape = (shape[-1],) if self.per_channel else ()
            kw = dict(shape=rshape, trainable=False, autocast=False, aggregation="mean")
            state["min"] = layer.add_weight(name=f"{role}_ema_min", initializer="zeros", **kw)
            state["max"] = layer.add_weight(name=f"{role}_ema_max", initializer="zeros", **kw)
            state["seen"] = layer.add_weight(name=f"{role}_ema_seen", shape=(), initializer="zeros",
                                             trainable=False, autocast=False, aggregation="only_first_replica")
        return state

    def observe(self, x, state, training):
        if not training or not state.get("ema"):
            return
        axes = reduce_axes(x, self.per_channel)
        x = ops.stop_gradient(ops.cast(x, "float32"))
        bmin, bmax = ops.min(x, axis=axes), ops.max(x, axis=axes)
        first = ops.equal(state["seen"], 0.0)
        d = self.ema_decay
        state["min"].assign(ops.where(first, bmin, d * state["min"] + (1.0 - d) * bmin))
        state["max"].assign(ops.where(first, bmax, d * state["max"] + (1.0 - d) * bmax))
        state["seen"].assign(ops.minimum(state["seen"] + 1.0, 1e9))

    def reset_range(self, state):
        if state.get("ema"):
            state["seen"].assign(0.0)

    def _range(self, x, state):
        """``(lo, hi)`` of shape ``()`` or ``(channels,)``, no gradient."""
        if state.get("ema"):
            lo, hi = ops.cast(state["min"], x.dtype), ops.cast(state["max"], x.dtype)
        else:
            axes = reduce_axes(x, self.per_channel)
            lo, hi = ops.min(x, axis=axes), ops.max(x, axis=axes)
        return ops.stop_gradient(lo), ops.stop_gradient(hi)

    # -- the grid -------------------------------------------------------------------------------------------
    def grid(self, x, state):
        """The integer grid of ``x`` (tensors): ``(x_clipped, n, scale, zero_point, x_q)`` with
        ``x_q = scale * (n - zero_point)``, ``n`` the integer codes (``[-(2^(b-1)-1), 2^(b-1)-1]`` symmetric,
        ``[0, 2^b-1]`` asymmetric), ``scale``/``zero_point`` of shape ``()`` or ``(channels,)``. The one definition of
        this quantizer's grid: training, :meth:`codes`, the exports and the NNA emulation use it. With a
        moving-average range the grid does not depend on ``x`` (pass zeros for the grid alone)."""
        lo, hi = self._range(x, state)
        if state["symmetric"]:
            qmax = 2.0 ** (self.bits - 1) - 1.0
            scale = _div(ops.maximum(ops.maximum(ops.abs(lo), ops.abs(hi)), _EPS), qmax)
            xc = ops.clip(x, -scale * qmax, scale * qmax)
            n = ops.clip(ops.round(x / scale), -qmax, qmax)
            return xc, n, scale, ops.zeros_like(scale), n * scale
        # Asymmetric: TF's own FakeQuantWithMinMaxVars op (the TFLite reference semantics, and what the TFLite
        # converter reads), on [lo, hi] widened to contain 0. Its gradient is the clip-masked STE.
        lo, hi = ops.minimum(ops.cast(lo, "float32"), 0.0), ops.maximum(ops.cast(hi, "float32"), 0.0)
        hi = ops.maximum(hi, lo + _EPS)
        fq = tf.quantization.fake_quant_with_min_max_vars_per_channel if self.per_channel \
            else tf.quantization.fake_quant_with_min_max_vars
        x_q = ops.cast(fq(ops.cast(x, "float32"), lo, hi, num_bits=self.bits), x.dtype)
        # The op's nudge (fake_quant_ops_functor.h): integer zero point, scale = (hi - lo) / (2^b - 1).
        qmax = 2.0 ** self.bits - 1.0
        scale = _div(hi - lo, qmax)
        zero_point = ops.clip(ops.floor(0.0 - lo / scale + 0.5), 0.0, qmax)
        n = ops.round(ops.cast(x_q, "float32") / scale) + zero_point
        return x, n, scale, zero_point, x_q

    def fake_quant_range(self, state) -> tuple[float, float, bool]:
        """``(lo, hi, narrow_range)`` for ``tf.quantization.fake_quant_with_min_max_vars`` that reproduce this
        quantizer's moving-average grid (per tensor): symmetric ``(-m, m, True)``, ``m = max(|min|, |max|)``;
        asymmetric the range widened to contain 0 (as :meth:`grid` does). What an int8 export writes."""
        if not state.get("ema") or self.per_channel:
            raise ValueError(f"{self!r}: fake_quant_range needs a per-tensor moving-average range (range='ema')")
        lo = min(float(np.asarray(state["min"])), 0.0)
        hi = max(float(np.asarray(state["max"])), 0.0)
        if state["symmetric"]:
            m = max(abs(lo), abs(hi), _EPS)
            return -m, m, True
        return lo, max(hi, lo + _EPS), False

    def _resolved(self, state):
        """A layer passes the state built for its role; standalone use quantizes like a weight."""
        return state if state and "symmetric" in state else self.resolve(None)

    def fake_quant(self, x, state=None):
        state = self._resolved(state)
        xc, _, _, _, x_q = self.grid(x, state)
        if not state["symmetric"]:
            return x_q  # the op carries its own masked straight-through gradient
        return ste(xc, x_q)

    def codes(self, x, state=None) -> IntegerCodes:
        state = self._resolved(state)
        _, n, scale, zero_point, _ = self.grid(ops.convert_to_tensor(x, "float32"), state)
        n = ops.convert_to_numpy(n).astype(np.int32)
        return IntegerCodes(n, channel_vector(scale), channel_vector(zero_point), self.bits,
                            signed=bool(state["symmetric"]))
