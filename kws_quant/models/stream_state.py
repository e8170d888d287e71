"""True streaming inference with state: a window model becomes a frame-synchronous step function.

:func:`to_streaming` reads a functional KWS model (a zoo model of :mod:`kws_quant.models.zoo`, or any functional
model built from the same kinds of layers) and returns a :class:`StreamingModel` whose :meth:`~StreamingModel.step`
takes one *hop* of frames ``[B, hop, n_mels]`` plus explicit state tensors and returns the logits ``[B, classes]``
plus the new state, calling the trained layers themselves (no weight copy). Per layer kind:

- ``"valid"`` 1-D convolutions (``QuantConv1D``, ``QuantDepthwiseConv1D``): a buffer of their last
  ``span - stride`` input frames; the stride (only where a step brings more than one frame) divides the frames;
- ``GlobalAveragePooling1D`` over the window's last ``T`` frames: a buffer of the last ``T - 1`` frames;
- ``QuantLSTM``: its ``(h, c)``, updated only once its input frames are real (the frames before come from the zero
  buffers), so a stream started at a window's first frame gives exactly the window model's output;
- ``Cropping1D`` at the start of time (window alignment, residual skips): the identity on the newest frames;
- frame-wise layers (batch-norm, activations and quantizers, dropout, ``Add``, dense on ``[B, T, C]``): as they are.

Every other layer (``Flatten``, pooling with a stride, ``"same"`` padding, a crop at the end) mixes future or
far-apart frames and raises :class:`NotStreamableError`: such a model streams by re-running on a sliding window
(:class:`kws_quant.models.StreamingRunner`). The step at which an output first equals the window model's is
``first_valid_step``; with state from zeros the outputs before it read the zero buffers.
"""
from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from kws_quant.layers import QuantConv1D, QuantDepthwiseConv1D, QuantLSTM
from kws_quant.models.compute import layer_macs
from kws_quant.models.streaming import stream_features

_FRAMEWISE = ("QuantBatchNormalization", "QuantActivation", "Dropout", "Add", "Activation", "ReLU",
              "BatchNormalization", "QuantDense", "Dense")


class NotStreamableError(ValueError):
    """The model has a layer that cannot run frame by frame with state."""


@dataclasses.dataclass
class _Node:
    layer: keras.layers.Layer
    kind: str                 # input | conv | pool | lstm | identity | framewise
    inputs: list              # keys of the input tensors
    output: str               # key of the output tensor
    state: tuple = ()         # (frames, channels) of the buffer, or ("lstm", units)
    gate: int = 0             # lstm: the step from which its input is real
    frames_out: int = 1       # output frames per step (time-axis tensors)


def _keys(args):
    """Tensor keys (``layer:node:index``) in a layer's inbound-node arguments, in order."""
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            name, node, index = args["config"]["keras_history"]
            return [f"{name}:{node}:{index}"]
        return [k for v in args.values() for k in _keys(v)]
    if isinstance(args, (list, tuple)):
        return [k for v in args for k in _keys(v)]
    return []


class StreamingModel(tf.Module):
    """The frame-synchronous form of a window model (see the module docstring).

    Attributes:
        hop: frames per step (input ``[B, hop, n_mels]``).
        n_mels: features per frame.
        window: the window model's input frames.
        state_shapes: per state tensor, its shape without the batch axis (buffers ``(frames, channels)``; LSTM
            ``(units,)``), then the step counter ``()`` (int32).
        first_valid_step: from this step (0-based) the logits equal the window model's on the last ``window``
            frames (the LSTM's from the stream's start).
    """

    def __init__(self, model: keras.Model):
        super().__init__(name=f"{model.name}_streaming")
        self.model = model
        _, self.window, self.n_mels = model.input_shape
        self._nodes, self.hop = _plan(model)
        shapes, self.first_valid_step = _state_layout(self._nodes, self.window, self.hop)
        self.state_shapes = tuple(tuple(s) for s in shapes)

    @property
    def plan(self) -> tuple:
        """The layers in execution order, as read for streaming: per node its ``layer``, ``kind`` (``input``,
        ``conv``, ``pool``, ``lstm``, ``identity``, ``framewise``), ``inputs`` and ``output`` (tensor keys),
        ``state`` (the buffer's ``(frames, channels)``, or ``("lstm", units)``) and ``frames_out`` (output frames
        per step). What exports of the streaming form (:mod:`kws_quant.export.tflite.stream_graph`) read."""
        return tuple(self._nodes)

    @property
    def num_classes(self) -> int:
        return int(self.model.output_shape[-1])

    def initial_state(self, batch_size: int = 1) -> list:
        """Zero buffers and step counter for ``batch_size`` streams."""
        return [tf.zeros((batch_size, *shape), tf.float32) for shape in self.state_shapes[:-1]] + \
            [tf.zeros((), tf.int32)]

    @tf.autograph.experimental.do_not_convert  # Python control flow over the plan only
    def step(self, frames, states):
        """``frames [B, hop, n_mels]``, ``states`` (as :meth:`initial_state`) → ``(logits [B, classes], states)``."""
        frames = tf.convert_to_tensor(frames, tf.float32)
        *buffers, count = states
        values, new, i = {}, [], 0
        for node in self._nodes:
            xs = [values[k] for k in node.inputs]
            if node.kind == "input":
                y = frames
            elif node.kind == "identity":
                y = xs[0]
            elif node.kind == "framewise":
                y = node.layer(xs if len(xs) > 1 else xs[0], training=False)
            elif node.kind == "lstm":
                h, c = buffers[i], buffers[i + 1]
                out, (h2, c2) = node.layer.step(xs[0][:, -1], (h, c), training=False)
                on = count >= node.gate
                new += [tf.where(on, h2, h), tf.where(on, c2, c)]
                i += 2
                y = out
            else:  # conv | pool: prepend the buffered frames
                x = tf.concat([buffers[i], xs[0]], axis=1) if node.state[0] else xs[0]
                if node.state[0]:
                    new.append(x[:, -node.state[0]:])
                    i += 1
                y = node.layer(x, training=False) if node.kind == "conv" else tf.reduce_mean(x, axis=1)
            values[node.output] = y
        return values[self._output], new + [count + 1]

    @property
    def _output(self):
        return self._nodes[-1].output

    def macs_per_step(self) -> int:
        """Multiply-accumulates of one step (:func:`kws_quant.models.compute.layer_macs` of each weight layer)."""
        total = 0
        for node in self._nodes:
            if node.kind == "lstm":
                lstm = node.layer  # one frame per step: its input and recurrent kernels once
                total += int(np.prod(lstm.kernel.shape)) + int(np.prod(lstm.recurrent_kernel.shape))
            elif node.kind in ("conv", "framewise"):
                shape = node.layer.output.shape
                total += layer_macs(node.layer, (None, *([node.frames_out] if len(shape) == 3 else []), shape[-1]))
        return total

    def macs_per_second(self, hop_ms: float = 10.0) -> float:
        """MACs per second of audio (one step per ``hop`` frames of ``hop_ms``)."""
        return self.macs_per_step() * 1000.0 / (self.hop * hop_ms)

    def state_bytes(self, bytes_per_value: int = 1) -> int:
        """Size of the state of one stream (buffers and LSTM state; int8 = 1 byte per value)."""
        return bytes_per_value * sum(int(np.prod(s)) for s in self.state_shapes[:-1])


def _stride(layer) -> int:
    s = layer.strides
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _span(layer) -> int:
    k = layer.kernel_size[0] if isinstance(layer.kernel_size, (tuple, list)) else layer.kernel_size
    d = layer.dilation_rate[0] if isinstance(layer.dilation_rate, (tuple, list)) else layer.dilation_rate
    return int(d) * (int(k) - 1) + 1


def _plan(model) -> tuple[list, int]:
    """The model's layers in order as :class:`_Node` s, and the hop (frames per step)."""
    config = model.get_config()
    if "layers" not in config or "input_layers" not in config:
        raise NotStreamableError(f"model {model.name!r} is not a functional model: it cannot be streamed")
    nodes, frames, hop = [], {}, None  # frames: key -> input frames per step (None: no time axis)
    for entry in config["layers"]:
        name, layer = entry["name"], model.get_layer(entry["name"])
        kind_name = type(layer).__name__
        inbound = entry["inbound_nodes"]
        if len(inbound) > 1:
            raise NotStreamableError(f"layer {name!r} is called more than once: not supported for streaming")
        key = f"{name}:0:0"
        if not inbound:  # the input layer
            nodes.append(_Node(layer, "input", [], key))
            frames[key] = "hop"
            continue
        ins = _keys(inbound[0]["args"])
        n_in = [frames[k] for k in ins]
        n = n_in[0]
        if len(set(map(str, n_in))) > 1:
            raise NotStreamableError(f"layer {name!r} ({kind_name}) joins tensors of different frame rates")
        where = f"layer {name!r} ({kind_name})"
        if isinstance(layer, (QuantConv1D, QuantDepthwiseConv1D)):
            if layer.padding != "valid":
                raise NotStreamableError(f"{where} has padding={layer.padding!r}: streaming needs 'valid' "
                                         "(causal-aligned) convolutions")
            s, span = _stride(layer), _span(layer)
            if n == "hop":
                if hop is not None:
                    raise NotStreamableError(f"{where}: a second convolution on the input frames")
                hop, n = s, s
            if n % s or span < s:
                raise NotStreamableError(f"{where}: time stride {s} with {n} frame(s) per step (span {span}): "
                                         "only the first convolution may stride (its stride is the hop)")
            nodes.append(_Node(layer, "conv", ins, key, (span - s, int(layer.input.shape[-1]))))
            n //= s
        elif kind_name == "Cropping1D":
            if layer.cropping[1] != 0:
                raise NotStreamableError(f"{where} crops the end of time: not causal")
            nodes.append(_Node(layer, "identity", ins, key))
        elif kind_name == "GlobalAveragePooling1D":
            if n != 1:
                raise NotStreamableError(f"{where}: pooling needs one frame per step, got {n}")
            t = int(layer.input.shape[1])
            nodes.append(_Node(layer, "pool", ins, key, (t - 1, int(layer.input.shape[-1]))))
            n = None
        elif isinstance(layer, QuantLSTM):
            if layer.return_sequences or layer.return_state or n != 1:
                raise NotStreamableError(f"{where}: streaming supports an LSTM returning its last output, one frame "
                                         f"per step (return_sequences={layer.return_sequences}, {n} frames/step)")
            nodes.append(_Node(layer, "lstm", ins, key, ("lstm", layer.units)))
            n = None
        elif kind_name in _FRAMEWISE:
            nodes.append(_Node(layer, "framewise", ins, key))
        else:
            raise NotStreamableError(f"{where} mixes frames in a way that has no streaming form; this model streams "
                                     "by re-running on a sliding window (kws_quant.models.StreamingRunner)")
        frames[key] = n
    if hop is None:
        raise NotStreamableError(f"model {model.name!r} has no convolution over time: nothing to stream")
    if frames[nodes[-1].output] is not None:
        raise NotStreamableError(f"model {model.name!r} still has a time axis at its output")
    return nodes, hop


def _state_layout(nodes, window: int, hop: int) -> tuple[list, int]:
    """State shapes (plus the step counter), and the first step whose logits equal the window model's; sets each
    LSTM's gate (the step from which its input frames are real)."""
    shapes, ready = [], {}  # ready: key -> first step whose value reads no zero-buffer frame
    per_step = {}
    for node in nodes:
        if node.kind == "input":
            ready[node.output], per_step[node.output] = 0, hop
            continue
        r = max(ready[k] for k in node.inputs)
        n = per_step[node.inputs[0]]
        if node.kind == "conv":
            if node.state[0]:
                shapes.append(node.state)
            r += math.ceil(node.state[0] / n) if node.state[0] else 0
            n = n // _stride(node.layer)
        elif node.kind == "pool":
            if node.state[0]:
                shapes.append(node.state)
            r += node.state[0]
        elif node.kind == "lstm":
            shapes += [(node.state[1],), (node.state[1],)]
            node.gate = r
        ready[node.output], per_step[node.output] = r, n
        node.frames_out = n
    last = ready[nodes[-1].output]
    lstm = [nd for nd in nodes if nd.kind == "lstm"]
    first = max(last, window // hop - 1) if lstm else last
    return shapes + [()], first


def is_streamable(model: keras.Model) -> bool:
    """Whether :func:`to_streaming` can convert ``model`` (a zoo model, not the DNN)."""
    try:
        _plan(model)
    except NotStreamableError:
        return False
    return True


def to_streaming(model: keras.Model) -> StreamingModel:
    """The frame-synchronous streaming form of ``model`` (raises :class:`NotStreamableError` with the layer that
    prevents it)."""
    return StreamingModel(model)


class StatefulStreamingRunner:
    """Run a :class:`StreamingModel` over ``[frames, n_mels]`` feature streams, one hop per step (XLA-compiled
    scan), with the interface of :class:`kws_quant.models.StreamingRunner` (``window``, ``n_mels``, ``hop``,
    ``posteriors``, ``end_frames``): output ``i`` is the posterior of the window ending at frame
    ``i * hop + window - 1``, so DET scoring is unchanged; a convolutional model's outputs equal the window model's.

    Args:
        model: a window model (converted with :func:`to_streaming`) or a :class:`StreamingModel`.
        hop_frames: must equal the model's hop (frames per step).
        jit_compile: XLA-compile the scan.
    """

    def __init__(self, model, hop_frames: int | None = None, block_steps: int = 512, jit_compile: bool = True):
        self.stream = model if isinstance(model, StreamingModel) else to_streaming(model)
        self.window, self.n_mels, self.hop = self.stream.window, self.stream.n_mels, self.stream.hop
        if hop_frames is not None and int(hop_frames) != self.hop:
            raise ValueError(f"hop_frames={hop_frames}: the streaming model {self.stream.name!r} steps "
                             f"{self.hop} frames at a time (the stride of its first convolution)")
        if block_steps < 1:
            raise ValueError(f"block_steps={block_steps} must be positive")
        self.block_steps = int(block_steps)
        self.num_classes = self.stream.num_classes
        spec = tf.TensorSpec([self.block_steps, 1, self.hop, self.n_mels], tf.float32)
        states = [tf.TensorSpec([1, *shape], tf.float32) for shape in self.stream.state_shapes[:-1]] + \
            [tf.TensorSpec([], tf.int32)]
        # one shape for every call: XLA compiles once; the state carries over from block to block
        self._run = tf.function(self._scan, input_signature=[spec, states], jit_compile=jit_compile)

    def _scan(self, chunks, states):
        def body(acc, chunk):
            logits, new = self.stream.step(chunk, acc[0])
            return new, tf.nn.softmax(logits, axis=-1)[0]

        every, out = tf.scan(body, chunks, initializer=(states, tf.zeros([self.num_classes])))
        return out, [s[-1] for s in every]  # tf.scan stacks the state of every step

    def posteriors(self, features: np.ndarray) -> np.ndarray:
        """Class posteriors ``[num_windows, classes]`` of one stream (as ``StreamingRunner.posteriors``), the state
        starting from zeros."""
        feats = stream_features(features, self.window, self.n_mels)
        offset = self.window % self.hop
        steps = (len(feats) - offset) // self.hop
        chunks = feats[offset:offset + steps * self.hop].reshape(steps, 1, self.hop, self.n_mels)
        blocks = -(-steps // self.block_steps)
        pad = blocks * self.block_steps - steps
        chunks = np.concatenate([chunks, np.repeat(chunks[-1:], pad, axis=0)]) if pad else chunks
        states, out = self.stream.initial_state(1), []
        for b in range(blocks):
            posts, states = self._run(tf.constant(chunks[b * self.block_steps:(b + 1) * self.block_steps]), states)
            out.append(posts.numpy())
        return np.concatenate(out)[(self.window - offset) // self.hop - 1:steps]

    def end_frames(self, num_windows: int) -> np.ndarray:
        """Index of the last frame of each output's window, ``[num_windows]``."""
        return np.arange(num_windows) * self.hop + self.window - 1
