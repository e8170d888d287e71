"""The int8 LiteRT export of a zoo model's streaming form (:func:`to_tflite_streaming`), and its window form for
comparison (:func:`to_tflite_window`).

The streaming ``.tflite`` runs one hop per invoke. Signature ``serving_default``:

- inputs ``frames`` (float32 ``[1, hop, n_mels]``: the per-mel ``bn_in`` runs in float ahead of the model's
  QUANTIZE op, as in the window export) and one **int8** ``state_<i>_<layer>`` ``[1, frames, channels]`` per
  buffer (the last input frames of each convolution with more than one tap, the last ``T - 1`` frames of the
  average pooling; ``i`` = 00, 01, … in the order of the Keras ``StreamingModel``'s state), each on the grid of the
  values it buffers;
- outputs ``logits`` (int8 on a calibrated grid) and ``state_<i>_<layer>_next`` (int8, same shape and grid as the
  input it replaces), which the host feeds back as ``state_<i>_<layer>`` at the next step.

A stream starts from the zero state (every state tensor filled with its zero point: the float 0.0 the Keras
:class:`~kws_quant.models.stream_state.StreamingModel` starts from); from step ``first_valid_step`` on, the logits
are the window model's on the window ending at the current frame. A ``<name>.stream.json`` next to the file
lists hop, window, ``first_valid_step`` and each state tensor's shape, scale and zero point, for hosts without a
signature runner. :class:`LiteRTStreamingModel` runs the file step by step.

Weights: every dense/conv/depthwise op holds exactly the Keras quantizer's integer codes (the batch-norm after it
folded into its per-channel scales, codes negated on a channel whose gain is negative), written over the
converter's and checked after reading the file back; biases are ``round(b / (s_in · s_w))`` on those scales; the
activations and state tensors carry the Keras quantizers' own grids. Depthwise kernels are ``DEPTHWISE_CONV_2D``
filters ``[1, 1, taps, channels]`` with per-channel scales on axis 3.

A ``QuantLSTM`` (the CRNN) adds three **float32** state tensors, ``state_<i>_lstm_h`` and ``state_<i>_lstm_c`` (the
recurrent state, which Keras keeps and feeds back in float) and ``state_<i>_lstm_step`` (a step count, 0 up to the
step from which its input frames are real; until then the cell stays at its zero state, as the Keras stream's). Its
two projections are *hybrid* ``FULLY_CONNECTED`` ops: int8 weights with the kernel's and the recurrent kernel's
exact codes and per-unit scales, float inputs quantized per row as they come (``asymmetric_quantize_inputs``), float
outputs; the gates and the cell update run in float, and the emitted ``h`` is quantized on the layer's output grid
for the int8 layers after it. Measured on the trained CRNN (docs/models.md), an all-int8 cell (int8 gate
pre-activations and cell state on calibrated grids) kept 20 % of the logits within one output step, and an int8
``h`` fed back drifts from Keras' float recurrence; LiteRT's converter makes no int16 cell inside an int8 model.
Its window form is its stream run over the window's hops (:func:`to_tflite_window` refuses it).
"""
from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from kws_quant.export.front_end import FrontEnd, features_dict, front_end_path, load_front_end
from kws_quant.export.tflite import flatbuffer
from kws_quant.export.tflite.ir import FakeQuantOp, UnsupportedModelError
from kws_quant.export.tflite.runtime import make_interpreter, quantize_input
from kws_quant.export.tflite.stream_graph import Chain, Recurrent, calibrate, read_stream_graph, stream_windows

__all__ = ["LiteRTStreamingModel", "check_streaming", "keras_stream_logits", "stream_metadata_path",
           "to_tflite_streaming", "to_tflite_window"]

_OP_OF_KIND = {"dense": "FULLY_CONNECTED", "conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D"}


def stream_metadata_path(path) -> str:
    """``<name>.stream.json`` next to a streaming ``.tflite``."""
    root, _ = os.path.splitext(os.fspath(path))
    return root + ".stream.json"


class _StepModule(tf.Module):
    def __init__(self, graph, whole: bool):
        super().__init__()
        self._graph = graph
        if whole:
            spec = [tf.TensorSpec([1, graph.window, graph.n_mels], tf.float32, "window")]
            self.serve = tf.function(lambda w: {"logits": graph.whole(w)}, input_signature=spec)
            return
        specs = [tf.TensorSpec([1, graph.hop, graph.n_mels], tf.float32, "frames")] + [
            tf.TensorSpec([1, *st.shape], tf.float32, st.name) for st in graph.states]
        names = [st.name for st in graph.states]

        def serve(frames, *states):  # the signature's inputs are named after the specs
            logits, new = graph.step(frames, list(states))
            return {"logits": logits, **{f"{n}_next": s for n, s in zip(names, new)}}

        self.serve = tf.function(serve, input_signature=specs)


def _convert(graph, whole: bool) -> bytes:
    if whole:
        _no_recurrent_window(graph)
    module = _StepModule(graph, whole)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if not graph.quantize:
        return bytes(converter.convert())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8  # inputs read by a QUANTIZE op (the states); the frames stay float
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _layout(lin, codes, shape):
    """Keras kernel layout → the TFLite filter ``shape``."""
    if lin.kind == "depthwise":  # [taps, C] → [1, 1, taps, C]
        return codes.reshape(shape)
    return np.moveaxis(codes, -1, 0).reshape(shape)  # [..., in, out] → [out, ..., in]


def _match(m, sg, linear_ops) -> list:
    """The operator index of each linear op: same builtin, filter size, and the converter's own weights closest
    to the layer's (the converter orders a DAG's ops its own way)."""
    taken, found = set(), []
    for lin in linear_ops:
        codes, scale = lin.int8_weights()
        mine = codes.astype(np.float64) * scale.astype(np.float64)
        best = None
        for i, op in enumerate(sg.operators):
            if i in taken or flatbuffer.op_name(m, op) != _OP_OF_KIND[lin.kind]:
                continue
            w_t = sg.tensors[op.inputs[1]]
            if int(np.prod(w_t.shape)) != codes.size:
                continue
            axis = 3 if lin.kind == "depthwise" else 0
            if lin.hybrid:  # float weights, the converter's own copy of the layer's (an LSTM's projection)
                s, step = 1.0, 0.0
            else:
                s = np.asarray(w_t.quantization.scale, np.float64)
                s = s.reshape([-1 if a == axis else 1 for a in range(len(w_t.shape))]) if s.size > 1 else s
                step = s.max()
            theirs = flatbuffer.tensor_values(m, w_t).astype(np.float64) * s
            err = np.max(np.abs(theirs - _layout(lin, mine, w_t.shape)))
            if err <= 1.01 * step + 1e-6 * np.abs(mine).max(initial=0) and (best is None or err < best[0]):
                best = (err, i)
        if best is None:
            raise RuntimeError(f"{lin.owner}: no {_OP_OF_KIND[lin.kind]} op of the converter holds this layer's "
                               "weights; cannot patch")
        taken.add(best[1])
        found.append(best[1])
    return found


def _exact_grids(m, sg, points) -> None:
    """Give each per-tensor int8 activation tensor whose grid is a Keras quantizer's (up to the converter's float64
    derivation) that quantizer's exact float32 scale and zero point."""
    grids = [p.grid for p in points if p.grid is not None]
    for t in sg.tensors:
        q = t.quantization
        if q is None or q.scale is None or len(q.scale) != 1 or m.buffers[t.buffer].data is not None:
            continue
        s, z = float(q.scale[0]), int(q.zeroPoint[0])
        near = [g for g in grids if g[1] == z and abs(g[0] - s) <= 1e-6 * g[0]]
        if near:
            g = min(near, key=lambda g: abs(g[0] - s))
            q.scale, q.zeroPoint = [g[0]], [g[1]]


def _patch(data: bytes, graph, int4: bool = False) -> tuple[bytes, list]:
    from tensorflow.lite.python import schema_py_generated as schema

    m = flatbuffer.load_object(data)
    sg = m.subgraphs[0]
    linear_ops = graph.linear_ops()
    where = _match(m, sg, linear_ops)
    _exact_grids(m, sg, graph.quant_points())
    used = set()
    for i, lin in zip(where, linear_ops):
        op = sg.operators[i]
        in_t, w_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
        want = schema.TensorType.FLOAT32 if lin.hybrid else schema.TensorType.INT8
        if w_t.type != want or in_t.type != want:
            raise RuntimeError(f"{lin.owner}: the converter did not produce an int8 op" if not lin.hybrid else
                               f"{lin.owner}: the converter did not keep this projection in float")
        shared = {int(op.inputs[1])} | ({int(op.inputs[2])} if len(op.inputs) > 2 and op.inputs[2] >= 0 else set())
        if shared & used:
            raise RuntimeError(f"{lin.owner}: the converter shares a weight tensor between two ops; cannot patch")
        used |= shared
        codes, scale = lin.int8_weights()
        laid = _layout(lin, codes, w_t.shape)
        if int4 and not lin.hybrid and lin.bits <= 4 and laid.min(initial=0) >= -8 and laid.max(initial=0) <= 7:
            m.buffers[w_t.buffer].data = flatbuffer.pack_int4(laid)  # LiteRT unpacks them to the same int8 codes
            w_t.type = schema.TensorType.INT4
        else:
            m.buffers[w_t.buffer].data = np.frombuffer(laid.astype(np.int8).tobytes(), np.uint8).copy()
        flatbuffer.set_quant(w_t, scale, axis=3 if lin.kind == "depthwise" else 0)
        if lin.hybrid:  # int8 weights under a float op: LiteRT's hybrid kernel (inputs quantized per row)
            w_t.type = schema.TensorType.INT8
            op.builtinOptions.asymmetricQuantizeInputs = True
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                b_t = sg.tensors[op.inputs[2]]
                m.buffers[b_t.buffer].data = np.frombuffer(lin.bias.astype(np.float32).tobytes(), np.uint8).copy()
            continue
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b_t = sg.tensors[op.inputs[2]]
            b_scale = float(in_t.quantization.scale[0]) * scale.astype(np.float64)
            b_codes = np.round(lin.int8_bias() / b_scale)
            if b_t.type != schema.TensorType.INT32 or np.abs(b_codes).max(initial=0) >= 2 ** 31:
                raise RuntimeError(f"{lin.owner}: the bias is not an int32 tensor it fits in")
            m.buffers[b_t.buffer].data = np.frombuffer(b_codes.astype(np.int32).tobytes(), np.uint8).copy()
            flatbuffer.set_quant(b_t, b_scale)
        elif lin.has_bias and np.any(lin.bias != 0):
            raise RuntimeError(f"{lin.owner}: the converter dropped a non-zero bias")
    flatbuffer.per_tensor_where_uniform(m, sg)
    return flatbuffer.serialize(m, False), where


def _verify(data: bytes, graph, where) -> None:
    """Read the file back: every linear op holds the quantizer's codes and scales; one invoke."""
    m = flatbuffer.load_object(data)
    names = [flatbuffer.op_name(m, op) for op in m.subgraphs[0].operators]
    position = {i: k for k, i in enumerate(i for i, n in enumerate(names) if n in _OP_OF_KIND.values())}
    found = flatbuffer.read_linear_ops(data)
    for i, lin in zip(where, graph.linear_ops()):
        got = found[position[i]]
        codes, scale = lin.int8_weights()
        if not np.array_equal(got["weights"], _layout(lin, codes, got["weights"].shape)):
            raise RuntimeError(f"{lin.owner}: exported weights differ from the quantizer's codes")
        if not np.array_equal(np.broadcast_to(got["scale"], scale.shape), scale):
            raise RuntimeError(f"{lin.owner}: exported scales differ from the quantizer's scales")
    interp = make_interpreter(data)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()


def _load(model):
    if isinstance(model, (str, os.PathLike)):
        import kws_quant  # noqa: F401  (registers the quantized layers)
        model = keras.saving.load_model(model, compile=False)
    return model


def _prepare(model, representative_data, output_margin):
    model = _load(model)
    if not 0.0 <= output_margin <= 1.0:
        raise ValueError(f"output_margin={output_margin!r} must be in [0, 1]")
    graph = read_stream_graph(model)
    x = None if representative_data is None else np.asarray(representative_data, np.float32)
    if x is None or x.ndim != 3 or x.shape[1:] != (graph.window, graph.n_mels) or not len(x):
        raise ValueError(f"representative_data must be float windows [n, {graph.window}, {graph.n_mels}] (e.g. "
                         f"validation windows): they calibrate the logits' int8 range and the quantization points "
                         f"the Keras model has no quantizer for; got "
                         f"{None if x is None else x.shape}")
    calibrate(graph, x, output_margin)
    return graph


def _write(path, data) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def to_tflite_streaming(model, path, representative_data=None, *, output_margin: float = 0.1,
                        quantize: bool = True, split_front_end: bool = False, int4: bool = False,
                        features=None) -> str:
    """Export the streaming form of a stage-2 QAT zoo model (``dscnn``, ``tcresnet``, ``crnn``; any model that
    :func:`~kws_quant.models.stream_state.to_streaming` reads, built from convolutions, depthwise convolutions,
    batch-norms, ReLU, residual ``Add``, average pooling and a ``QuantLSTM``) to an int8 ``.tflite`` running one hop
    per invoke (the module docstring has its inputs and outputs), plus ``<name>.stream.json``. Returns ``path``.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` file.
        path: the ``.tflite`` to write (missing parent directories are created).
        representative_data: float windows ``[n, window, n_mels]`` (e.g. a few hundred validation windows): streamed
            from zero state, they calibrate the logits' int8 range and the few quantization points the Keras model
            has no quantizer for (the un-activated branch outputs a residual ``Add`` sums, the pooled average).
        output_margin: widen each calibrated range by this share of its span on each side.
        quantize: ``False`` writes the float32 step (float weights and state tensors, no ``.stream.json``;
            ``representative_data`` unused): the size and speed baseline.
        split_front_end: move the per-mel normalisation (``bn_in``) out of the model into ``<name>.front_end.json``
            (:class:`kws_quant.export.front_end.FrontEnd`, the window export's format): the ``frames`` input is then
            **int8** (the input quantizer's codes) and the model has no float op; a device normalises and quantizes
            each frame as it arrives (``FrontEnd.frames``). :class:`LiteRTStreamingModel` reads the file and takes
            float frames either way.
        features: with ``split_front_end``, the log-mel settings the frames are computed with
            (:class:`kws_quant.features.FeatureConfig` or its dict), written into the front-end file.
        int4: store the kernels of ≤4-bit quantizers (dense, conv and depthwise; an LSTM's hybrid projections stay
            int8) as packed INT4 tensors (two codes a byte). LiteRT unpacks them to the same int8 codes: without
            XNNPACK the logits equal the int8 file's bit for bit; XNNPACK runs only the int8 file's ops, so with it
            the two differ by its rounding.

    Raises:
        ValueError (:class:`UnsupportedModelError`): a layer with no int8 streaming form (named), a model with no
        streaming form, a model not in QAT stage 2 or lacking quantizers (the layers listed).
    """
    if not quantize:
        return _float(model, path, whole=False)
    graph = _prepare(model, representative_data, output_margin)
    front = graph.split_front_end() if split_front_end else None
    data, where = _patch(_convert(graph, whole=False), graph, int4)
    _verify(data, graph, where)
    path = _write(path, data)
    runner = LiteRTStreamingModel(data)  # the bytes: its frames input as the file has it, no front end applied
    front_json = None
    if front is not None:
        if runner.frames_dtype != np.int8:
            raise UnsupportedModelError(f"split_front_end=True: model {graph.model.name!r} still has float ops "
                                        "before its input quantizer; only a per-mel batch-norm can move out")
        point = next(op for n in graph.nodes if isinstance(n, Chain) for op in n.ops if isinstance(op, FakeQuantOp))
        scale, zero_point = runner.inputs["frames"]["quantization"]
        shape = (graph.window, graph.n_mels)
        front_json = FrontEnd([{"op": "affine", "layer": op.owner, "gain": op.gain.astype(np.float32).tolist(),
                                "offset": op.offset.astype(np.float32).tolist()} for op in front], shape, shape,
                              float(scale), int(zero_point), bool(point.narrow),
                              features_dict(features)).save(front_end_path(path))
    elif os.path.exists(front_end_path(path)):  # an earlier split export's, which this file must not be read with
        os.remove(front_end_path(path))
    meta = {"hop": graph.hop, "n_mels": graph.n_mels, "window": graph.window,
            "first_valid_step": graph.first_valid_step, "frames_dtype": np.dtype(runner.frames_dtype).name,
            "front_end": os.path.basename(front_json) if front_json else None,
            "logits": dict(zip(("scale", "zero_point"), runner.output_grid)),
            "states": [dict(name=st.name, shape=[1, *st.shape], scale=runner.state_grids[st.name][0],
                            zero_point=runner.state_grids[st.name][1]) for st in graph.states]}
    with open(stream_metadata_path(path), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return path


def to_tflite_window(model, path, representative_data=None, *, output_margin: float = 0.1,
                     quantize: bool = True) -> str:
    """The same ops over a whole window (input float ``[1, window, n_mels]``, int8 logits): what re-running the
    window model costs in LiteRT, with the same codes and calibrated points as :func:`to_tflite_streaming`.
    ``quantize=False``: the float32 window graph (``representative_data`` unused)."""
    if not quantize:
        return _float(model, path, whole=True)
    graph = _prepare(model, representative_data, output_margin)
    data, where = _patch(_convert(graph, whole=True), graph)
    _verify(data, graph, where)
    return _write(path, data)


def _no_recurrent_window(graph) -> None:
    recurrent = [n.op.owner for n in graph.nodes if isinstance(n, Recurrent)]
    if recurrent:
        raise UnsupportedModelError(
            f"model {graph.model.name!r}: layer {recurrent[0]!r} (QuantLSTM) reads the window from a zero state, so "
            f"its window form is its streaming form run for the window's {graph.window_steps} hops (the same ops, "
            "once each): use to_tflite_streaming and LiteRTStreamingModel.run")


def _float(model, path, whole: bool) -> str:
    """The float32 graph (no fake-quant; the weights the model uses at stage 2, batch-norms folded)."""
    graph = read_stream_graph(_load(model))
    graph.quantize = False
    return _write(path, _convert(graph, whole=whole))


class LiteRTStreamingModel:
    """Run a streaming ``.tflite`` (path or bytes) one hop at a time, the host loop of a device.

    ``state = m.initial_state()``; ``logits, state = m.step(frames, state)`` with ``frames [hop, n_mels]`` or
    ``[1, hop, n_mels]`` float; ``logits`` are dequantized float ``[classes]``, ``state`` a dict of int8 arrays
    (float32 for an LSTM's cell state and step count) by input name, fed back as they come. ``inputs`` /
    ``outputs``: the signature's tensor details by name."""

    def __init__(self, model, num_threads: int = 1, xnnpack: bool = True, front_end: FrontEnd | None = None):
        self.interpreter = make_interpreter(model, num_threads=num_threads, xnnpack=xnnpack)
        if front_end is None and isinstance(model, (str, os.PathLike)) and os.path.exists(front_end_path(model)):
            front_end = load_front_end(front_end_path(model))  # a split export: the per-mel normalisation
        self.front_end = front_end
        runner = self.interpreter.get_signature_runner("serving_default")
        self.inputs, self.outputs = runner.get_input_details(), runner.get_output_details()
        # state_<i>_<layer>: sorted, the order of the model's buffers (the Keras StreamingModel's state order)
        self.state_names = sorted(n for n in self.inputs if n != "frames")
        frames = self.inputs["frames"]
        self.frames_shape = tuple(int(v) for v in frames["shape"])
        self.frames_dtype = frames["dtype"]
        self.hop, self.n_mels = self.frames_shape[1:]
        self.state_grids = {n: (float(self.inputs[n]["quantization"][0]), int(self.inputs[n]["quantization"][1]))
                            for n in self.state_names}
        self.state_shapes = {n: tuple(int(v) for v in self.inputs[n]["shape"]) for n in self.state_names}
        logits = self.outputs["logits"]
        self.output_grid = (float(logits["quantization"][0]), int(logits["quantization"][1]))
        self.num_classes = int(logits["shape"][-1])
        self.state_dtypes = {n: self.inputs[n]["dtype"] for n in self.state_names}
        for n in self.state_names:
            if self.state_dtypes[n] not in (np.int8, np.float32) or \
                    self.outputs[f"{n}_next"]["dtype"] != self.state_dtypes[n]:
                raise UnsupportedModelError(f"state {n!r} is not an int8 (or an LSTM cell's float32) tensor")

    def initial_state(self) -> dict:
        """Every state tensor at its zero point (the float 0.0 a Keras stream starts from)."""
        return {n: np.full(self.state_shapes[n], self.state_grids[n][1], self.state_dtypes[n])
                for n in self.state_names}

    def frames_input(self, frames) -> np.ndarray:
        """Float frames as the model takes them: through the front end of a split export (normalised, then the
        input quantizer's codes), else quantized with the input quantizer's grid for an int8 input."""
        x = np.asarray(frames, np.float32).reshape(self.frames_shape)
        if self.front_end is not None:
            return self.front_end.frames(x.reshape(self.frames_shape[1:])).reshape(self.frames_shape)
        if self.frames_dtype == np.int8:
            return quantize_input(x, *self.inputs["frames"]["quantization"])
        return x

    def step(self, frames, state: dict):
        """One hop: ``(logits float [classes], next state)``."""
        interp = self.interpreter
        interp.set_tensor(self.inputs["frames"]["index"], self.frames_input(frames))
        for n in self.state_names:
            interp.set_tensor(self.inputs[n]["index"], state[n])
        interp.invoke()
        s, z = self.output_grid
        logits = (interp.get_tensor(self.outputs["logits"]["index"]).astype(np.float32).reshape(-1) - z) * \
            np.float32(s)
        return logits, {n: interp.get_tensor(self.outputs[f"{n}_next"]["index"]) for n in self.state_names}

    def run(self, hops) -> np.ndarray:
        """Logits ``[steps, classes]`` of a stream of hops ``[steps, hop, n_mels]`` from the zero state."""
        state, out = self.initial_state(), []
        for frames in hops:
            logits, state = self.step(frames, state)
            out.append(logits)
        return np.stack(out) if out else np.zeros((0, self.num_classes), np.float32)


def keras_stream_logits(model, hops) -> np.ndarray:
    """The Keras :class:`~kws_quant.models.stream_state.StreamingModel`'s logits from zero state: ``[steps,
    classes]`` for hops ``[steps, hop, n_mels]``, or ``[n, steps, classes]`` for ``n`` streams ``[steps, n, hop,
    n_mels]`` (stepped as one batch): the reference the export is checked against."""
    from kws_quant.models.stream_state import to_streaming

    hops = np.asarray(hops, np.float32)
    single = hops.ndim == 3
    hops = hops[:, None] if single else hops
    stream = to_streaming(model)
    step = tf.function(stream.step)  # traced once: the eager layers cost ~0.1 s a step
    state, out = stream.initial_state(hops.shape[1]), []
    for frames in hops:
        logits, state = step(tf.constant(frames), state)
        out.append(np.asarray(logits))
    out = np.stack(out, 1) if out else np.zeros((hops.shape[1], 0, stream.num_classes), np.float32)
    return out[0] if single else out


def check_streaming(model, path, windows) -> dict:
    """Stream each of ``windows [n, window, n_mels]`` hop by hop from the zero state through the ``.tflite`` at
    ``path`` (its int8 state fed back) and through the Keras streaming model. Returns ``within_one_step`` (share of
    the logits of every step within one int8 output step), ``max_error_steps``, ``saturated`` (share of the Keras
    logits beyond the int8 output range), ``argmax_agreement`` (at the last step of each window) and the last
    step's logits of both, ``litert_last``/``keras_last`` ``[n, classes]`` (a convolutional model's equal its window
    model's)."""
    graph = read_stream_graph(model)
    hops = stream_windows(graph, windows)  # [steps, n, hop, mels]
    ref = keras_stream_logits(model, hops)  # [n, steps, classes]
    runner = LiteRTStreamingModel(path)
    lite = np.stack([runner.run(hops[:, i]) for i in range(hops.shape[1])])
    step, zero = runner.output_grid
    err = np.abs(lite - ref) / step
    lo, hi = (-128 - zero) * step, (127 - zero) * step
    return {"within_one_step": float(np.mean(err <= 1.0)), "max_error_steps": float(err.max(initial=0.0)),
            "saturated": float(np.mean((ref < lo - step / 2) | (ref > hi + step / 2))),
            "argmax_agreement": float(np.mean(lite[:, -1].argmax(1) == ref[:, -1].argmax(1))),
            "steps_per_window": int(hops.shape[0]), "litert_last": lite[:, -1], "keras_last": ref[:, -1]}
