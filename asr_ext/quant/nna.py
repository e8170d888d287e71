"""NNA operator emulation (METHODS §8; Shakiah et al. 2023): layers whose forward pass is an int8 accelerator's
integer arithmetic, exactly as TFLite's int8 kernels compute it, with a straight-through backward pass.

Numerics of :class:`NNADense` (TFLite ``FULLY_CONNECTED``, int8):

- input ``q_x ∈ [-128, 127]`` with scale ``s_x`` and zero point ``z_x`` (asymmetric per tensor; range from a moving
  average of batch min/max as the ``linear`` quantizer, :mod:`kws_quant.quantizers.linear`);
- weights ``q_w ∈ [-127, 127]``, symmetric, per output channel (``s_w[c]``) or per tensor;
- bias int32 ``q_b = round(b / (s_x s_w))`` (float64, half to even: what :func:`kws_quant.export.tflite.to_tflite`
  writes), accumulator int32 ``acc = Σ (q_x - z_x) q_w + q_b``;
- requantization: ``(M, shift) = QuantizeMultiplier(s_x s_w / s_y)`` in float64 (Q0.31 multiplier), then
  ``MultiplyByQuantizedMultiplier(acc, M, shift)`` = ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
  acc · 2^max(shift,0), M), max(-shift,0))`` (gemmlowp's double rounding, ``rounding="double"``, the default) or
  ``(acc·M + 2^(30-shift)) >> (31-shift)`` (``rounding="single"``: TFLite built with ``TFLITE_SINGLE_ROUNDING``),
  plus ``z_y``, clamped to ``[-128, 127]`` narrowed by a fused ReLU/ReLU6 (``CalculateActivationRangeQuantized``).

All of it runs on tf int32/int64 tensors, so it is bit-exact in eager, graph and XLA mode; the primitives live beside
the exporter in :mod:`kws_quant.export.tflite.fixed_point` (re-exported here). The int8 export
(:func:`kws_quant.export.tflite.to_tflite`, which writes the quantizers' own float32 grids that the emulation reads)
run by LiteRT gives identical int8 outputs (``tests/test_nna.py``): ``"double"`` equals LiteRT's optimized builtin
per-channel kernel (``make_interpreter(..., xnnpack=False)``), ``"single"`` its reference kernels
(``reference=True``; the pip build of LiteRT compiles them with single rounding), per channel and per tensor.
LiteRT's optimized *per-tensor* int8 kernel on x86 rounds with a shorter multiplier and differs from both in rare
near-tie cases. The layer's value is the dequantized output ``s_y (q_y - z_y)``; its gradient is that of the float
fake-quant path (``QuantDense`` with the same quantizers: clip-masked STE at the input/output, STE at the weights).

:class:`NNALSTM` runs every gate on the same primitives, with 256-entry lookup tables for sigmoid and tanh built as
TFLite builds them for its int8 ``LOGISTIC`` (output scale 1/256, zero point -128) and ``TANH`` (1/128, 0) ops
(:func:`lut_table`). Its fixed-point grids, per time step (``H`` units, gate order i, f, g, o as ``QuantLSTM``):

- ``z = sat8(MBQM(acc_x, M_x) + MBQM(acc_h, M_h))`` per gate, ``acc_x = (q_x - z_x) W + q_b`` (int32),
  ``acc_h = q_h U``; gate grids are fixed: scale 2^-4 (range ±8) for the sigmoid gates, 2^-5 (±4) for the tanh gate,
  where both functions are saturated to within half an output step;
- ``i, f, o = LUT_sigmoid(z)`` (real ``u/256``, ``u = q + 128 ∈ [0, 255]``), ``g = LUT_tanh(z_g)`` (real ``q/128``);
- cell state int16 at scale 2^-11 (``|c| < 16``): ``c = sat16(RDBP(u_f c, 8) + RDBP(u_i g, 4))``;
- ``h = sat8(RDBP(u_o · LUT_tanh(sat8(RDBP(c, 6))), 8))`` at scale 2^-7 (``|h| < 1``): the emitted sequence and the
  recurrent input (RDBP: gemmlowp's RoundingDivideByPOT, round half away from zero).

Only the input range is learned; the weights' scales follow the weights. LiteRT has no int8 LSTM op with LUT gates,
so the LSTM emulation is checked through its primitives (LUTs identical to LiteRT's ops, MBQM against a NumPy
reference) and against the float LSTM, not end to end.

Ranges: the input/output ranges are moving averages of training batches (frozen at inference); before the first
training step they are empty and every value quantizes to the zero point, so train (``model.fit``) or call the
model with ``training=True`` once before using it. :func:`to_nna` copies the ranges a QAT model already learned.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import activations, ops

from asr_ext.quant import bits_map as bm
from asr_ext.quant.convert import clone_replacing
from kws_quant.export.tflite.fixed_point import (INT8, INT16, INT32, LUT_OUTPUT, ROUNDINGS, lut_lookup, lut_table,
                                              multiply_by_quantized_multiplier, quantize_multiplier,
                                              round_half_away, rounding_divide_by_pot,
                                              saturating_rounding_doubling_high_mul, to_int64)
from kws_quant.layers import QuantDense, QuantLSTM, all_layers
from kws_quant.quantizers.base import check_bits, check_choice, ste
from kws_quant.quantizers.linear import LinearQuantizer

_ACTIVATIONS = ("linear", "relu", "relu6")


# -- shared parts ---------------------------------------------------------------------------------------------------
def _check_bits(owner, bits):
    check_bits(f"{owner} bits", bits, 8, 8, "the NNA computes int8 weights and activations")


def _weights_quantizer(per_channel):
    return LinearQuantizer(bits=8, symmetric=True, per_channel=bool(per_channel), range="current", stage=1)


def _data_quantizer(ema_decay):
    return LinearQuantizer(bits=8, symmetric=False, range="ema", ema_decay=ema_decay, stage=1)


class _NNAMixin:
    """Quantizer set-up, integer grids and config shared by the NNA layers. The quantizers are derived from
    ``per_channel``/``ema_decay`` (any ``*_quantizer`` argument, e.g. from a parent's config, is replaced)."""

    _DERIVED = ("input_quantizer", "kernel_quantizer", "recurrent_kernel_quantizer", "bias_quantizer",
                "output_quantizer")

    def _nna_kwargs(self, bits, per_channel, ema_decay, rounding, kwargs, roles):
        _check_bits(type(self).__name__, bits)
        check_choice(type(self).__name__, "rounding", rounding, ROUNDINGS)
        self.rounding = rounding
        for key in self._DERIVED:
            kwargs.pop(key, None)
        data_q = _data_quantizer(ema_decay)
        self.per_channel, self.ema_decay = bool(per_channel), data_q.ema_decay
        for role in roles:
            kwargs[f"{role}_quantizer"] = data_q if role in ("input", "output") else _weights_quantizer(per_channel)
        return kwargs

    def _grid(self, role, x):
        """``(codes, scale, zero_point)`` of ``x`` on ``role``'s grid (the quantizer's own): int64 codes (int8 range),
        float32 scale (``()`` or ``(channels,)``), int64 int8 zero point. ``x=None``: only the grid (data roles)."""
        q = self.quantizers[role]
        _, n, scale, zp, _ = q.grid(tf.zeros((), tf.float32) if x is None else tf.cast(x, tf.float32),
                                    self.quantizer_state(role))
        offset = 0 if q.symmetric else 128  # asymmetric codes n ∈ [0, 255] → int8
        return to_int64(n) - offset, tf.cast(scale, tf.float32), to_int64(zp) - offset

    def _int_bias(self, bias, s_x, s_w, channels):
        """int32 bias on the accumulator's grid ``s_x·s_w`` (float64, half to even), ``[channels]`` int64."""
        if bias is None:
            return tf.zeros((channels,), tf.int64)
        q = tf.round(tf.cast(bias, tf.float64) / (tf.cast(s_x, tf.float64) * tf.cast(s_w, tf.float64)))
        return to_int64(tf.clip_by_value(q, *INT32))

    def _emulated(self, fake_quant, emulate):
        """``emulate()`` forward with ``fake_quant``'s gradient where the stage has the emulation on (≥ 1)."""
        return ops.cond(ops.greater_equal(self.qat_stage, 1),
                        lambda: tf.nest.map_structure(lambda f, e: ste(f, ops.cast(e, f.dtype)), fake_quant,
                                                      emulate()),
                        lambda: fake_quant)

    def _nna_config(self, config):
        for key in self._DERIVED:
            config.pop(key, None)
        return {**config, "bits": 8, "per_channel": self.per_channel, "ema_decay": self.ema_decay,
                "rounding": self.rounding}


def _int_matmul(a, b):
    """``a [..., k] · b [k, n]`` on int32 (exact; the caller bounds the accumulator), int64 out."""
    a = tf.cast(a, tf.int32)
    shape = tf.shape(a)
    out = tf.matmul(tf.reshape(a, [-1, shape[-1]]), tf.cast(b, tf.int32))
    return to_int64(tf.reshape(out, tf.concat([shape[:-1], tf.shape(out)[-1:]], 0)))


def _check_fan_in(layer, fan_in):
    bound = int(fan_in) * 255 * 127
    if bound > INT32[1] // 2:  # leave half the range to the bias
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: fan-in {fan_in} can overflow the int32 accumulator "
                         f"(|acc| up to {bound})")


# -- dense ----------------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="asr_ext")
class NNADense(_NNAMixin, QuantDense):
    """Dense layer in NNA emulation mode (module docstring). Input ``[..., in]`` float → ``[..., units]`` float, the
    dequantized int8 output of an int8 ``FULLY_CONNECTED``.

    Args:
        units: output width.
        bits: 8 (the only width the NNA computes; anything else raises ``ValueError``).
        per_channel: weight scales per output channel (``True``) or one per tensor.
        ema_decay: decay of the input and output moving-average ranges.
        activation: ``None``/``"linear"``, ``"relu"`` or ``"relu6"`` (a fused clamp).
        rounding: ``"double"`` (gemmlowp, TFLite's default) or ``"single"`` (``TFLITE_SINGLE_ROUNDING``): see
            :data:`ROUNDINGS`.
        use_bias, initializers, regularizers, constraints: as :class:`kws_quant.layers.QuantDense`.

    The emulation is on from QAT stage 1 (``qat_stage`` ≥ 1, the default 2); stage 0 is the float layer.
    """

    def __init__(self, units, bits: int = 8, per_channel: bool = True, ema_decay: float = 0.999,
                 rounding: str = "double", **kwargs):
        kwargs = self._nna_kwargs(bits, per_channel, ema_decay, rounding, kwargs, ("input", "kernel", "output"))
        super().__init__(units, **kwargs)
        act = activations.serialize(self.activation)
        act = act if isinstance(act, str) else getattr(self.activation, "__name__", repr(act))
        if act not in _ACTIVATIONS:
            raise ValueError(f"NNADense {self.name!r}: activation {act!r} is not allowed; allowed (fused into the "
                             f"int8 op): {', '.join(_ACTIVATIONS)}")
        self._fused = act

    def build(self, input_shape):
        super().build(input_shape)
        _check_fan_in(self, input_shape[-1])

    def _params(self):
        """The integer parameters as tensors (see :meth:`integer_params`)."""
        _, s_x, z_x = self._grid("input", None)
        q_w, s_w, _ = self._grid("kernel", self.kernel)
        _, s_y, z_y = self._grid("output", None)
        s_w = tf.broadcast_to(s_w, [self.units])
        low, high = tf.constant(INT8[0], tf.int64), tf.constant(INT8[1], tf.int64)
        if self._fused != "linear":
            low = tf.maximum(low, z_y)
        if self._fused == "relu6":
            high = tf.minimum(high, z_y + to_int64(round_half_away(tf.constant(6.0, tf.float32) / s_y)))
        real = tf.cast(s_x, tf.float64) * tf.cast(s_w, tf.float64) / tf.cast(s_y, tf.float64)
        m, shift = quantize_multiplier(real, self.rounding)
        return {"input_scale": s_x, "input_zero_point": z_x, "kernel": q_w, "kernel_scale": s_w,
                "bias": self._int_bias(self.bias if self.use_bias else None, s_x, s_w, self.units),
                "output_scale": s_y, "output_zero_point": z_y, "multiplier": m, "shift": shift,
                "activation_min": low, "activation_max": high}

    def _forward(self, q_x, p):
        acc = _int_matmul(to_int64(q_x) - p["input_zero_point"], p["kernel"]) + p["bias"]
        y = multiply_by_quantized_multiplier(acc, p["multiplier"], p["shift"], self.rounding)
        return tf.clip_by_value(y + p["output_zero_point"], p["activation_min"], p["activation_max"])

    def integer_params(self) -> dict:
        """What the int8 op computes with, as NumPy (eager): ``input_scale``/``output_scale`` (float32),
        ``input_zero_point``/``output_zero_point``, ``kernel`` (int codes ``[in, units]``), ``kernel_scale``
        (float32 ``[units]``), ``bias`` (int32 ``[units]``), ``multiplier``/``shift`` (``[units]``), fused
        ``activation_min``/``activation_max``."""
        return {k: v.numpy() for k, v in self._params().items()}

    def integer_forward(self, q_x) -> tf.Tensor:
        """int8 input codes ``[..., in]`` → int8 output codes ``[..., units]`` (int8 tensor), the emulated op."""
        return tf.cast(self._forward(q_x, self._params()), tf.int8)

    def call(self, inputs, training=None):
        y_fq = super().call(inputs, training)  # float fake-quant path: updates the ranges, gives the gradient

        def emulate():
            p = self._params()
            q_x, _, _ = self._grid("input", inputs)
            return tf.cast(self._forward(q_x, p) - p["output_zero_point"], tf.float32) * p["output_scale"]

        return self._emulated(y_fq, emulate)

    def get_config(self):
        return self._nna_config(super().get_config())


# -- LSTM -----------------------------------------------------------------------------------------------------------
_GATE_FRAC = (4, 4, 5, 4)  # i, f, g, o: gate pre-activation scale 2^-frac
_CELL_FRAC, _H_FRAC = 11, 7
_SIGMOID_LUT = lut_table("sigmoid", 2.0 ** -4, 0)
_TANH_LUT = lut_table("tanh", 2.0 ** -5, 0)


@keras.saving.register_keras_serializable(package="asr_ext")
class NNALSTM(_NNAMixin, QuantLSTM):
    """:class:`~kws_quant.layers.QuantLSTM` in NNA emulation mode: int8 input and weights, int32 gate
    accumulators requantized to int8, LUT sigmoid/tanh, int16 cell state, int8 hidden state at scale 1/128 (module
    docstring). Same weights, call and :meth:`step` as ``QuantLSTM``; outputs are the dequantized emulated values
    (``h`` on the 1/128 grid, ``c`` on the 2^-11 grid), gradients those of the float LSTM on fake-quantized input and
    weights.

    Args:
        units, return_sequences, return_state, unit_forget_bias, initializers: as ``QuantLSTM``.
        bits: 8 only; per_channel: weight scales per gate unit (4H) or per tensor; ema_decay: the input range's;
        rounding: of the gate requantization, as :class:`NNADense`.
    """

    def __init__(self, units, bits: int = 8, per_channel: bool = True, ema_decay: float = 0.999,
                 rounding: str = "double", **kwargs):
        kwargs = self._nna_kwargs(bits, per_channel, ema_decay, rounding, kwargs,
                                  ("input", "kernel", "recurrent_kernel"))
        super().__init__(units, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        _check_fan_in(self, max(int(input_shape[-1]), self.units))

    def _params(self):
        h = self.units
        _, s_x, z_x = self._grid("input", None)
        q_w, s_w, _ = self._grid("kernel", self.kernel)
        q_u, s_u, _ = self._grid("recurrent_kernel", self.recurrent_kernel)
        s_w, s_u = (tf.cast(tf.broadcast_to(s, [4 * h]), tf.float64) for s in (s_w, s_u))
        s_z = tf.constant(np.repeat(2.0 ** -np.asarray(_GATE_FRAC, np.float64), h))
        m_x, sh_x = quantize_multiplier(tf.cast(s_x, tf.float64) * s_w / s_z, self.rounding)
        m_h, sh_h = quantize_multiplier(2.0 ** -_H_FRAC * s_u / s_z, self.rounding)
        return {"z_x": z_x, "s_x": s_x, "q_w": q_w, "q_u": q_u, "q_b": self._int_bias(self.bias, s_x, s_w, 4 * h),
                "m_x": m_x, "sh_x": sh_x, "m_h": m_h, "sh_h": sh_h}

    def _cell(self, acc_x, h, c, p):
        """One integer step: ``acc_x [B, 4H]`` (input part of the gate accumulators), ``h``, ``c`` int64 ``[B, H]``
        codes (scales 2^-7, 2^-11) → new ``(h, c)``."""
        mbqm = multiply_by_quantized_multiplier
        z = (mbqm(acc_x, p["m_x"], p["sh_x"], self.rounding)
             + mbqm(_int_matmul(h, p["q_u"]), p["m_h"], p["sh_h"], self.rounding))
        zi, zf, zg, zo = tf.split(tf.clip_by_value(z, *INT8), 4, axis=-1)
        ui, uf, uo = (lut_lookup(g, _SIGMOID_LUT) + 128 for g in (zi, zf, zo))  # real u / 256
        g = lut_lookup(zg, _TANH_LUT)  # real g / 128
        c = tf.clip_by_value(rounding_divide_by_pot(uf * c, 8) + rounding_divide_by_pot(ui * g, 4), *INT16)
        t = lut_lookup(tf.clip_by_value(rounding_divide_by_pot(c, _CELL_FRAC - 5), *INT8), _TANH_LUT)
        return tf.clip_by_value(rounding_divide_by_pot(uo * t, 15 - _H_FRAC), *INT8), c

    def _emulate(self, x, h0, c0):
        """Float ``x [B, T, in]``, float state → (h sequence ``[B, T, H]``, last h, last c), dequantized."""
        p = self._params()
        q_x, _, _ = self._grid("input", x)
        acc_x = tf.transpose(_int_matmul(q_x - p["z_x"], p["q_w"]) + p["q_b"], [1, 0, 2])  # [T, B, 4H]
        h0 = to_int64(tf.clip_by_value(tf.round(tf.cast(h0, tf.float32) * 2.0 ** _H_FRAC), *INT8))
        c0 = to_int64(tf.clip_by_value(tf.round(tf.cast(c0, tf.float32) * 2.0 ** _CELL_FRAC), *INT16))
        hs, cs = tf.scan(lambda s, a: self._cell(a, *s, p), acc_x, initializer=(h0, c0))
        seq = tf.cast(tf.transpose(hs, [1, 0, 2]), tf.float32) * 2.0 ** -_H_FRAC
        return seq, seq[:, -1], tf.cast(cs[-1], tf.float32) * 2.0 ** -_CELL_FRAC

    def call(self, inputs, initial_state=None, training=None):
        fq = super().call(inputs, initial_state=initial_state, training=training)
        if initial_state is None:
            h0 = c0 = tf.zeros((tf.shape(inputs)[0], self.units), tf.float32)
        else:
            h0, c0 = initial_state

        def emulate():
            seq, h, c = self._emulate(inputs, h0, c0)
            out = seq if self.return_sequences else h
            return [out, h, c] if self.return_state else out

        return self._emulated(fq, emulate)

    def step(self, x, state, training=False, parameters=None):
        """One time step for decoding, as ``QuantLSTM.step``: ``x [B, in]``, ``state = (h, c)`` →
        ``(output [B, H], (h, c))``; emulated (float state on the 2^-7 / 2^-11 grids)."""
        y, (h, c) = super().step(x, state, training, parameters)

        def emulate():
            _, h_e, c_e = self._emulate(x[:, None], *state)
            return h_e, h_e, c_e

        y, h, c = self._emulated((y, h, c), emulate)
        return y, (h, c)

    def get_config(self):
        return self._nna_config(super().get_config())


# -- conversion -----------------------------------------------------------------------------------------------------
_DENSE_KEYS = ("name", "trainable", "dtype", "units", "activation", "use_bias", "kernel_initializer",
               "bias_initializer", "kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint")
_LSTM_KEYS = ("name", "trainable", "dtype", "units", "return_sequences", "return_state", "unit_forget_bias",
              "kernel_initializer", "recurrent_initializer", "bias_initializer")


def _candidates(model) -> dict:
    return {layer.name: layer for layer in all_layers(model)
            if isinstance(layer, (QuantDense, keras.layers.Dense, QuantLSTM))}


def to_nna(model, layers="*", per_channel: bool = True, ema_decay: float = 0.999,
           rounding: str = "double") -> keras.Model:
    """A copy of a Functional/Sequential ``model`` whose matched dense and LSTM layers are NNA-emulated.

    Args:
        model: float or QAT model of ``QuantDense``/``keras.layers.Dense``/``QuantLSTM`` (and any other) layers.
            Weights, QAT stage and the moving-average ranges the model already has (same role) are copied.
        layers: which layers: a layer-name pattern (``fnmatch``), a list of patterns, or a map
            ``{pattern: True/False}`` (the most specific pattern wins, :mod:`asr_ext.quant.bits_map`; ``False``
            keeps a layer as it is), e.g. ``{"*": True, "logits": False}``.
        per_channel, ema_decay, rounding: of every converted layer.

    Raises:
        ValueError: a pattern matching no dense/LSTM layer, a map value that is not a bool, a converted dense layer
        whose activation an int8 op cannot fuse (linear/relu/relu6 only).
    """
    if isinstance(layers, str):
        layers = {layers: True}
    elif isinstance(layers, (list, tuple)):
        layers = {p: True for p in layers}
    candidates = _candidates(model)
    chosen = bm.resolve(layers, list(candidates), what="to_nna layer map")
    bad = {n: v for n, v in chosen.items() if not isinstance(v, bool)}
    if bad:
        name, value = next(iter(bad.items()))
        raise ValueError(f"to_nna layer map: layer {name!r} got {value!r}; expected True or False")

    def replace(layer):
        if not chosen.get(layer.name) or candidates.get(layer.name) is not layer:
            return None
        lstm = isinstance(layer, QuantLSTM)
        config = {k: v for k, v in layer.get_config().items() if k in (_LSTM_KEYS if lstm else _DENSE_KEYS)}
        return (NNALSTM if lstm else NNADense)(**config, per_channel=per_channel, ema_decay=ema_decay,
                                               rounding=rounding)

    return clone_replacing(model, replace)


__all__ = ["INT8", "LUT_OUTPUT", "ROUNDINGS", "NNADense", "NNALSTM", "lut_lookup", "lut_table",
           "multiply_by_quantized_multiplier", "quantize_multiplier", "rounding_divide_by_pot",
           "saturating_rounding_doubling_high_mul", "to_nna"]
