"""A quantized LSTM on the shared :class:`~kws_quant.layers.QuantLayer` mechanism.

``QuantLSTM`` computes exactly ``keras.layers.LSTM`` (gate order i, f, c, o; ``tanh`` / ``sigmoid``; weights
``kernel [in, 4H]``, ``recurrent_kernel [H, 4H]``, ``bias [4H]`` in Keras' order, so ``set_weights`` takes a Keras
LSTM's ``get_weights()``), with quantizers by role:

- ``kernel``: the input kernel (stage 1);
- ``recurrent_kernel``: the recurrent kernel (stage 1). **Left out, it uses the kernel's spec** (its own state: own
  per-channel scales, own GQ scale); pass ``recurrent_kernel_quantizer=None`` explicitly to keep it float, or another
  spec for another precision. Its state is built as a *weight* (what the quantizers decide by the role name
  ``kernel``), with variables named ``recurrent_kernel_*``;
- ``bias`` (stage 2), ``input`` (the input sequence, stage 2), ``output`` (the emitted hidden sequence, stage 2).

The weights are fake-quantized once per call, outside the time loop; the input projection of every frame is one
matmul before the loop, so the loop does one ``[B, H] x [H, 4H]`` matmul per step (a ``tf.while_loop``; ~1.5-2x
faster than ``keras.layers.LSTM`` on CPU, see ``tests/test_asr_model.py``). The recurrent state fed back inside the
loop stays float; the ``output`` quantizer applies to the emitted sequence (what the next layer reads). Padding at
the end of a sequence does not change the outputs at earlier frames (no masking needed for right-padded batches).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import initializers, ops

from kws_quant.layers.base import FULLY_QUANTIZED, QuantLayer, pop_quantizer_specs

_ROLES = ("input", "kernel", "recurrent_kernel", "bias", "output")
_WEIGHT_ROLES = ("kernel", "recurrent_kernel")


class _RecurrentKernelView:
    """The layer as the recurrent kernel's quantizer sees it at build time: its ``kernel`` is the recurrent kernel
    and every state variable it adds is prefixed ``recurrent_`` (so ``kernel_gq_scale`` → ``recurrent_kernel_gq_scale``)."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def kernel(self):
        return self._layer.recurrent_kernel

    def add_weight(self, *args, name=None, **kwargs):
        return self._layer.add_weight(*args, name=f"recurrent_{name}" if name else None, **kwargs)

    def __getattr__(self, item):
        return getattr(self._layer, item)


@keras.saving.register_keras_serializable(package="kws_quant")
class QuantLSTM(QuantLayer):
    """LSTM over ``[batch, time, features]`` with registry quantizers (see the module docstring).

    Args:
        units: hidden size H.
        return_sequences: return ``[B, T, H]`` (default) or the last output ``[B, H]``.
        return_state: also return the final ``(h, c)``.
        unit_forget_bias, kernel_initializer, recurrent_initializer, bias_initializer: as ``keras.layers.LSTM``.
        input_quantizer, kernel_quantizer, recurrent_kernel_quantizer, bias_quantizer, output_quantizer: registry
            specs (``None``: float; ``recurrent_kernel_quantizer`` left out: the kernel's spec).

    Call: ``layer(x, initial_state=None, training=None)``; ``initial_state`` is ``[h0, c0]`` (zeros by default).
    One step for decoding: :meth:`step`.
    """

    ROLES = _ROLES

    def __init__(self, units, return_sequences=True, return_state=False, unit_forget_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 **kwargs):
        inherit = "recurrent_kernel_quantizer" not in kwargs
        specs = pop_quantizer_specs(_ROLES, kwargs)
        if inherit:
            specs["recurrent_kernel"] = specs.get("kernel")
        super().__init__(specs, **kwargs)
        self.recurrent_inherits_kernel = inherit
        self.units = int(units)
        if self.units <= 0:
            raise ValueError(f"QuantLSTM {self.name!r}: units={units!r} must be a positive integer")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    # -- build ------------------------------------------------------------------------------------------------
    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"QuantLSTM {self.name!r}: expected input [batch, time, features] with a known feature "
                             f"size; got shape {tuple(input_shape)}")
        n_in, h = int(input_shape[-1]), self.units
        self.kernel = self.add_weight(name="kernel", shape=(n_in, 4 * h), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(h, 4 * h),
                                                initializer=self.recurrent_initializer)
        if self.unit_forget_bias:
            base = self.bias_initializer

            def bias_init(shape, dtype=None):
                return ops.concatenate([base((h,), dtype), ops.ones((h,), dtype), base((2 * h,), dtype)])
        else:
            bias_init = self.bias_initializer
        self.bias = self.add_weight(name="bias", shape=(4 * h,), initializer=bias_init)
        recurrent_q = self._quantizers.pop("recurrent_kernel", None)
        self.build_quantizers({"input": tuple(input_shape), "kernel": (n_in, 4 * h), "bias": (4 * h,),
                               "output": (input_shape[0], input_shape[1], h)})
        if recurrent_q is not None:
            self._quantizers["recurrent_kernel"] = recurrent_q
            if self.qat_stage is None:
                self.qat_stage = self.add_weight(name="qat_stage", shape=(), dtype="int32",
                                                 initializer=keras.initializers.Constant(FULLY_QUANTIZED),
                                                 trainable=False, aggregation="only_first_replica")
            self._qstate["recurrent_kernel"] = recurrent_q.build(_RecurrentKernelView(self), (h, 4 * h), "kernel")

    def stage_of(self, role: str) -> int:
        q = self._quantizers[role]
        if q.stage is not None:
            return q.stage
        return 1 if role in _WEIGHT_ROLES else 2

    def weight_tensors(self):
        return {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel, "bias": self.bias}

    # -- forward ------------------------------------------------------------------------------------------------
    def quantized_parameters(self, training=None):
        """``(kernel, recurrent_kernel, bias)`` as the forward pass uses them (fake-quantized where on)."""
        return (self.quantize_role("kernel", self.kernel, training),
                self.quantize_role("recurrent_kernel", self.recurrent_kernel, training),
                self.quantize_role("bias", self.bias, training))

    def call(self, inputs, initial_state=None, training=None):
        x = self.quantize_role("input", inputs, training)
        kernel, recurrent, bias = self.quantized_parameters(training)
        xw = ops.matmul(x, kernel) + bias  # [B, T, 4H]: every frame's input projection in one matmul
        if initial_state is None:
            zeros = ops.zeros((ops.shape(x)[0], self.units), dtype=xw.dtype)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (ops.cast(s, xw.dtype) for s in initial_state)
        seq, h, c = _lstm_scan(xw, recurrent, h0, c0)
        if self.return_sequences:
            out = self.quantize_role("output", seq, training)
        else:
            out = self.quantize_role("output", h, training)
        return [out, h, c] if self.return_state else out

    def step(self, x, state, training=False, parameters=None):
        """One time step for decoding: ``x [B, in]``, ``state = (h, c)`` → ``(output [B, H], (h, c))``.

        ``parameters``: :meth:`quantized_parameters` computed once (else recomputed at each call).
        """
        x = self.quantize_role("input", x, training)
        kernel, recurrent, bias = parameters or self.quantized_parameters(training)
        h, c = _lstm_cell(ops.matmul(x, kernel) + bias, recurrent, *state)
        return self.quantize_role("output", h, training), (h, c)

    def zero_state(self, batch_size):
        zeros = ops.zeros((batch_size, self.units), dtype=self.compute_dtype)
        return zeros, zeros

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        out = (batch, input_shape[1], self.units) if self.return_sequences else (batch, self.units)
        if self.return_state:
            return [out, (batch, self.units), (batch, self.units)]
        return out

    def get_config(self):
        config = {
            **super().get_config(),
            "units": self.units, "return_sequences": self.return_sequences, "return_state": self.return_state,
            "unit_forget_bias": self.unit_forget_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        }
        if self.recurrent_inherits_kernel:  # keep "follows the kernel" through save/load and re-quantization
            config.pop("recurrent_kernel_quantizer", None)
        return config


def _lstm_cell(z_x, recurrent, h, c):
    z = z_x + tf.matmul(h, recurrent)
    i, f, g, o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def _lstm_scan(xw, recurrent, h0, c0):
    """``xw [B, T, 4H]`` (input projections incl. bias) → (outputs ``[B, T, H]``, last h, last c)."""
    xs = tf.transpose(xw, [1, 0, 2])
    steps = tf.shape(xs)[0]
    inputs = tf.TensorArray(xs.dtype, size=steps, clear_after_read=False).unstack(xs)
    outputs = tf.TensorArray(xs.dtype, size=steps)

    def body(t, h, c, out):
        h, c = _lstm_cell(inputs.read(t), recurrent, h, c)
        return t + 1, h, c, out.write(t, h)

    _, h, c, outputs = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, outputs),
                                   maximum_iterations=steps)
    seq = tf.transpose(outputs.stack(), [1, 0, 2])
    seq.set_shape([xw.shape[0], xw.shape[1], h0.shape[-1]])
    return seq, h, c
