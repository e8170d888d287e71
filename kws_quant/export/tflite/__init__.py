"""LiteRT (TFLite) export of QAT models: int8 ops whose weights are exactly the quantizers' integer codes.

How an int8 export is made (:func:`to_tflite`):

1. The Keras model is read as a chain of layers (one input, one output, each layer fed by the one before) into a
   short list of operations: linear ops (``QuantDense``/``QuantConv1D``/``QuantConv2D``; plain Keras
   ``Dense``/``Conv1D``/``Conv2D`` for float export), batch-norms, activations (linear, ReLU, ReLU6), fake-quant
   points (every 8-bit input/output/activation quantizer, with the model's frozen moving-average range) and
   shape-only layers (pooling, flatten, reshape, zero-padding). Dropout and noise layers are dropped.
2. Batch-norm is folded, with the gain ``g = γ/√(σ²+ε)`` and offset the Keras model uses (the quantized ones,
   ``bn.quantized_weights()``, when BN has quantizers):

   - BN *after* a linear op (``dense_i → bn_i``): ``g`` multiplies the per-output-channel scale, ``g·bias + offset``
     becomes the bias. The integer codes stay exactly the quantizer's (negated on a channel whose gain is
     negative: TFLite scales are positive).
   - BN *before* a linear op, directly or through 'valid' average pooling / flatten (per-channel affine maps
     commute with both): ``g`` multiplies the kernel rows (input channels), ``offset @ W`` is added to the bias.
     Such a kernel is off the quantizer's grid, so an int8 export re-quantizes it per output channel
     (``s = max|W'|/127``) and corrects the bias by ``-μ·(W_int8 - W')``, ``μ`` the BN's moving mean (its
     expected input), so the re-quantization error has zero mean.
   - BN *before the input quantizer* (the KWS model's per-mel ``bn_in``): an int8 model cannot absorb it (the
     quantizer sees its output), so it stays a float MUL + ADD ahead of the model's QUANTIZE op, moved after a
     'valid' average pooling that follows it (both act per channel and commute: fewer values to scale); the model
     then takes float windows (``io_dtype="auto"`` picks that). A float export folds it into ``dense_in``.
   - Any other BN: ``ValueError``.
3. A float ``tf.function`` graph is built from the folded, dequantized weights with
   ``tf.quantization.fake_quant_with_min_max_vars`` at every quantization point: the op, range widening and nudging
   the Keras quantizers themselves use. The model's output (logits) has no quantizer of its own: its int8 range is
   the min/max of the graph's outputs on ``representative_data``, widened by ``output_margin`` of the span on
   each side (windows beyond the range would saturate).
4. ``tf.lite.TFLiteConverter`` converts it (``optimizations=[DEFAULT]``; the fake-quant ops make it a QAT
   conversion) to ``FULLY_CONNECTED``/``CONV_2D`` ops with per-channel int8 weights, int32 biases and ReLU fused
   into the op. The converter re-derives weight codes from the float weights (it rescales every channel to use
   ±127), so the flatbuffer is patched (``tensorflow.lite.tools.flatbuffer_utils``): each weight tensor gets the
   quantizer's codes and scales, each bias is re-quantized as ``round(b / (s_in·s_w))`` on the patched scales.
   The result is read back and checked (codes, scales, one invoke) before it is written.

Pooling: a pooling before the first quantizer (the KWS model pools its normalised float frames, then quantizes)
stays a float ``AVERAGE_POOL_2D``. A 'valid' average pooling *after* a quantizer becomes an int8
``DEPTHWISE_CONV_2D`` with weights ``1/pool_size`` (code 127, scale ``1/(127·pool_size)``) re-quantized to the
input's own grid: LiteRT's int8 ``AVERAGE_POOL_2D`` is not taken by the XNNPACK delegate, which splits the graph
and runs a slow builtin kernel (``docs/bench_tflite.md``: 1.4× instead of ~2.7× over float).

Agreement with the Keras model: the KWS model's export is within one output step (``docs/bench_tflite.md``). What
int8 cannot reproduce is the average of quantized frames (a half step of the input grid, which a Keras model that
pools after its quantizer keeps in float and int8 rounds back to the grid: some logits then land up to ~1.5 steps
away; ``fold_pooling=True`` folds such a pooling into the dense layer after it, exact but with a kernel
``pool_size`` times larger) and a kernel re-quantized after folding a preceding BN.

Size: per-channel weights and int32 biases each carry a float32 scale and an int64 zero point per output
channel; identical vectors (the all-zero zero points) are written once and shared by the tensors that have them.

Interface: ``io_dtype="auto"`` (default) gives **int8 input and output** tensors (a fully integer model) when
nothing runs in float before the input quantizer: their scale and zero point are the input quantizer's and the
calibrated output range's, and quantizing a float window with :func:`quantize_input` (TF's fake-quant
arithmetic) is the Keras model's own input quantization. Otherwise, or with
``io_dtype="float32"``, the model takes and returns float32 through QUANTIZE/DEQUANTIZE ops. :func:`run_tflite`
handles both.

Split front end: ``split_front_end=True`` exports the model from its input quantizer on, with int8 input and output,
and writes the leading per-frame layers (per-channel batch-norm, time pooling) as a
:class:`~kws_quant.export.front_end.FrontEnd` (``<name>.front_end.json``) that a streaming device runs once per
frame; ``FrontEnd.apply(windows)`` gives the int8 windows the model takes.

Sub-8-bit packing: with ``int4=True`` the weights of a ``FULLY_CONNECTED`` op whose kernel quantizer has at most 4
bits are stored as packed ``INT4`` tensors (two codes a byte, the same codes and scales); LiteRT's builtin kernels
and XNNPACK run them and give the same outputs.

Float export (``quantize=False``, :func:`to_tflite_float`) builds the same folded graph without fake-quant points
and converts it without optimizations: the float baseline (float32 weights). For a QAT model its weights are what
the model uses at its current stage (dequantized codes at stage ≥ 1).

Modules: :mod:`~kws_quant.export.tflite.ir` (the ops), :mod:`~kws_quant.export.tflite.reader` (Keras model → ops,
front-end split), :mod:`~kws_quant.export.tflite.passes` (batch-norm and pooling folding, int8 checks),
:mod:`~kws_quant.export.tflite.graph` (float graph, output calibration, converter call),
:mod:`~kws_quant.export.tflite.flatbuffer` (read, patch, write the flatbuffer),
:mod:`~kws_quant.export.tflite.verify` (the check before writing), :mod:`~kws_quant.export.tflite.exporter`
(:func:`to_tflite`: the pipeline), :mod:`~kws_quant.export.tflite.runtime` (interpreter, input quantization,
inference) and :mod:`~kws_quant.export.tflite.fixed_point` (TFLite's integer requantization arithmetic and
lookup tables, which :mod:`asr_ext.quant.nna` emulates with).

Streaming zoo models (``dscnn``, ``tcresnet``, ``crnn``: residual adds, depthwise convolutions, buffers, an LSTM)
are not chains: :func:`to_tflite_streaming` exports their frame-synchronous form (one hop in, logits and int8
state tensors out, the same exact codes; depthwise kernels as ``DEPTHWISE_CONV_2D``) and :func:`to_tflite_window`
the same ops over a whole window; :class:`LiteRTStreamingModel` runs a streaming file step by step.
:mod:`~kws_quant.export.tflite.stream_graph` reads the streaming plan into a graph of the IR ops above,
:mod:`~kws_quant.export.tflite.stream_export` converts, patches, verifies and runs it. A ``QuantLSTM`` (the CRNN) has
int8 weights with exact codes in hybrid projections, its gates and float32 ``h``/``c`` state in float, and no
window file (its window is its stream over the window's hops).
"""
from kws_quant.export.tflite.exporter import to_tflite, to_tflite_float
from kws_quant.export.tflite.flatbuffer import output_grid, output_step, read_linear_ops
from kws_quant.export.tflite.ir import UnsupportedModelError
from kws_quant.export.tflite.runtime import make_interpreter, quantize_input, run_tflite
from kws_quant.export.tflite.stream_export import LiteRTStreamingModel, to_tflite_streaming, to_tflite_window

__all__ = ["LiteRTStreamingModel", "UnsupportedModelError", "make_interpreter", "output_grid", "output_step",
           "quantize_input", "read_linear_ops", "run_tflite", "to_tflite", "to_tflite_float", "to_tflite_streaming",
           "to_tflite_window"]
