"""A zoo model's streaming form as a graph of IR ops with explicit state, for the int8 LiteRT export.

:func:`read_stream_graph` reads the plan of :func:`kws_quant.models.stream_state.to_streaming` (the layers in
execution order, each conv/pooling with the frames it buffers) into a small DAG whose nodes apply the IR ops of
:mod:`kws_quant.export.tflite.ir`:

- :class:`Chain`: frame-wise ops in order (a dense/conv/depthwise :class:`~kws_quant.export.tflite.ir.LinearOp` with
  the batch-norm after it folded in, ReLU, the Keras quantizers' fake-quant points; the per-mel ``bn_in`` stays a
  float affine op ahead of the input quantizer);
- :class:`Buffer`: a state tensor: the last ``frames`` values of its source, concatenated before the new ones; it is
  quantized on its source's grid (an int8 state tensor of the LiteRT model);
- :class:`Recurrent`: a ``QuantLSTM`` cell (:class:`~kws_quant.export.tflite.ir.LstmOp`) with three float32 state
  tensors: ``h`` and ``c`` (as Keras feeds them back) and a step count that holds the cell at its zero state until
  its input frames are real (the Keras ``StreamingModel``'s gate);
- :class:`Join` (a residual ``Add``), :class:`Mean` (``GlobalAveragePooling1D`` over the buffered frames, as a
  depthwise convolution with weights ``1/T``: int32 sums, one rounding),
  :class:`Crop` (a crop at the start of time: the identity when streaming, a slice on a whole window).

Where an int8 model needs a grid the Keras model does not have (a residual branch's un-activated batch-norm output
before the ``Add``, the pooled average, the logits), a *calibrated* quantization point is added
(``FakeQuantOp.role == "calibrated"``): its range is the min/max that :func:`calibrate` observes on representative
windows, widened by a margin. These are the only quantization points the Keras model does not have.

:meth:`StreamGraph.step` runs one hop (``[B, hop, n_mels]`` + states → logits + states) and
:meth:`StreamGraph.whole` the whole window with the same ops (valid convolutions over all frames, the crops applied):
the two graphs :mod:`kws_quant.export.tflite.stream_export` converts.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from kws_quant import qat
from kws_quant.export.tflite import passes, reader
from kws_quant.export.tflite.ir import AffineOp, FakeQuantOp, LinearOp, LstmOp, UnsupportedModelError
from kws_quant.models.stream_state import NotStreamableError, to_streaming

__all__ = ["Buffer", "Chain", "Crop", "Join", "Mean", "Recurrent", "StateTensor", "StreamGraph", "calibrate",
           "read_stream_graph"]


@dataclasses.dataclass
class StateTensor:
    """One state input of the step (and its ``_next`` output): ``shape`` without the batch axis, int8 on ``grid``
    (float32 when ``grid`` is ``None``)."""
    name: str
    shape: tuple
    grid: FakeQuantOp | None  # None: a float32 tensor


@dataclasses.dataclass
class Chain:
    key: str
    src: str
    ops: list


@dataclasses.dataclass
class Buffer:
    key: str
    src: str
    name: str  # the state tensor's name
    frames: int
    channels: int
    grid: FakeQuantOp  # the grid of the buffered values (their source's)


@dataclasses.dataclass
class Recurrent:
    key: str
    src: str
    op: LstmOp
    names: tuple  # the state tensors' names: h, c, step
    gate: int  # the first step whose input frames are real (before it the cell keeps its zero state)

    def states(self) -> list:
        # float32, as Keras keeps them (a quantized h fed back drifts from Keras' recurrence); the step count 0..gate
        return [StateTensor(name, shape, None) for name, shape in zip(self.names, [(self.op.units,)] * 2 + [(1,)])]

    def step(self, x, states, quantize: bool, record: dict | None):
        """``x [B, 1, in]`` and ``(h, c, step)`` → ``(h [B, H], new states)``; the state moves from ``gate`` on."""
        h, c, count = states
        out, h2, c2 = self.op.cell(x[:, -1], h, c, quantize, record)
        on = tf.greater_equal(count, float(self.gate))
        return out, [tf.where(on, h2, h), tf.where(on, c2, c), tf.minimum(count + 1.0, float(self.gate))]

    def whole(self, x, quantize: bool):
        """``x [B, T, in]`` from the zero state (every frame real) → the last ``h [B, H]``."""
        out = h = c = tf.zeros((tf.shape(x)[0], self.op.units), tf.float32)
        for t in range(int(x.shape[1])):
            out, h, c = self.op.cell(x[:, t], h, c, quantize)
        return out


@dataclasses.dataclass
class Join:
    key: str
    srcs: list


@dataclasses.dataclass
class Mean:
    key: str
    src: str


@dataclasses.dataclass
class Crop:
    key: str
    src: str
    start: int  # frames cropped at the start of a whole window


def _calibrated(owner: str) -> FakeQuantOp:
    return FakeQuantOp(owner, "calibrated")


def _average(x):
    """The average over time ``[B, T, C] → [B, C]`` as a depthwise convolution with weights ``1/T`` (int32 sums, one
    requantization), as the window export averages after a quantizer."""
    frames, channels = int(x.shape[1]), int(x.shape[2])
    w = tf.constant(np.full((1, frames, channels, 1), 1.0 / frames, np.float32))
    y = tf.nn.depthwise_conv2d(tf.expand_dims(x, 1), w, strides=[1, 1, 1, 1], padding="VALID")
    return tf.reshape(y, [-1, channels])


def _has_range(op) -> bool:
    """A quantization point with a range now or after calibration."""
    return isinstance(op, FakeQuantOp) and (op.lo is not None or op.role == "calibrated")


class StreamGraph:
    """The DAG of one model (see the module docstring). Attributes: ``nodes``, ``buffers`` (the state tensors in
    order), ``hop``, ``n_mels``, ``window``, ``first_valid_step``, ``model``."""

    def __init__(self, model, nodes, hop, n_mels, window, first_valid_step):
        self.model, self.nodes, self.hop, self.n_mels = model, nodes, hop, n_mels
        self.window, self.first_valid_step = window, first_valid_step
        self.buffers = [n for n in nodes if isinstance(n, Buffer)]
        self.states = []  # the state tensors in order: a buffer's one, an LSTM's three
        for n in nodes:
            if isinstance(n, Buffer):
                self.states.append(StateTensor(n.name, (n.frames, n.channels), n.grid))
            elif isinstance(n, Recurrent):
                self.states += n.states()
        self.output = nodes[-1].key
        self.quantize = True  # False: the float graph (the float32 baseline export)

    def _ops(self) -> list:
        """Every op in graph order (an LSTM's projections, then its quantization points)."""
        out = []
        for n in self.nodes:
            if isinstance(n, Chain):
                out += n.ops
            elif isinstance(n, Recurrent):
                out += [n.op.x_proj, n.op.h_proj] + n.op.quant_points()
        return out

    def linear_ops(self) -> list:
        return [op for op in self._ops() if isinstance(op, LinearOp)]

    def quant_points(self) -> list:
        """Every fake-quant point with a range (the Keras quantizers' and the calibrated ones)."""
        return [op for op in self._ops() if isinstance(op, FakeQuantOp) and op.lo is not None]

    def calibration_points(self) -> list:
        return [op for op in self._ops() if isinstance(op, FakeQuantOp) and op.role == "calibrated"]

    @property
    def window_steps(self) -> int:
        """Hops in one window (its first ``window % hop`` frames, which the window model crops, left out)."""
        return self.window // self.hop

    def split_front_end(self) -> list:
        """Take the float affine ops (the per-mel ``bn_in``) off the start of the graph and return them: the graph
        then reads what they output, and its first op is the input quantizer (an int8 LiteRT input)."""
        first = next(n for n in self.nodes if isinstance(n, Chain) and n.src is None)
        taken = []
        while first.ops and isinstance(first.ops[0], AffineOp):
            taken.append(first.ops.pop(0))
        return taken

    def initial_state(self, batch_size: int = 1) -> list:
        return [tf.zeros((batch_size, *st.shape), tf.float32) for st in self.states]

    def _run(self, x, states, whole: bool, record: dict | None):
        values, new, i = {}, [], 0
        for node in self.nodes:
            if isinstance(node, Chain):
                y = x if node.src is None else values[node.src]
                for op in node.ops:
                    if record is not None and isinstance(op, FakeQuantOp) and op.role == "calibrated":
                        record.setdefault(id(op), []).append(y)
                    y = op.apply(y, self.quantize)
            elif isinstance(node, Buffer):
                y = values[node.src]
                if not whole:
                    y = tf.concat([node.grid.apply(states[i], self.quantize), y], axis=1)
                    new.append(y[:, -node.frames:])
                    i += 1
            elif isinstance(node, Recurrent):
                if whole:
                    y = node.whole(values[node.src], self.quantize)
                else:
                    y, states_next = node.step(values[node.src], states[i:i + 3], self.quantize, record)
                    new += states_next
                    i += 3
            elif isinstance(node, Join):
                y = values[node.srcs[0]]
                for k in node.srcs[1:]:
                    y = y + values[k]
            elif isinstance(node, Mean):
                y = _average(values[node.src])
            else:  # Crop
                y = values[node.src][:, node.start:] if whole else values[node.src]
            values[node.key] = y
        return values[self.output], new

    def step(self, frames, states, record: dict | None = None):
        """``frames [B, hop, n_mels]``, ``states`` (as :meth:`initial_state`) → ``(logits, new states)``, float,
        with fake-quant at every quantization point that has a range (``record``: collect the calibration points'
        inputs by ``id``)."""
        return self._run(tf.convert_to_tensor(frames, tf.float32), states, False, record)

    def whole(self, windows):
        """The window model's logits ``[B, classes]`` from the same ops."""
        return self._run(tf.convert_to_tensor(windows, tf.float32), [], True, None)[0]


def _layer_ops(layer, stage: int) -> list:
    try:
        return reader.read_ops([layer], True, stage)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{e} (streaming export)") from None


def read_stream_graph(model) -> StreamGraph:
    """The :class:`StreamGraph` of a stage-2 QAT zoo model (raises :class:`UnsupportedModelError` naming the layer
    it cannot export)."""
    try:
        stream = to_streaming(model)
    except NotStreamableError as e:
        raise UnsupportedModelError(f"model {model.name!r} has no streaming form: {e}") from None
    stage = qat.get_stage(model)
    if stage is None:
        raise UnsupportedModelError(f"model {model.name!r} has no quantized layers; the int8 export needs a QAT "
                                    "model: build it with a quantization recipe (e.g. 'tanh4') and train it into "
                                    "stage 2")
    if stage != 2:
        raise UnsupportedModelError(f"model {model.name!r} is in QAT stage {stage}; the int8 export needs stage 2 "
                                    "(inputs and activations quantized, with trained ranges). Train it through stage "
                                    "2, or kws_quant.qat.set_stage(model, 2) if it was trained there.")
    plan = stream.plan
    alias = {}
    for node in plan:
        if node.kind == "identity" and node.layer.cropping[0] == 0:
            alias[node.output] = alias.get(node.inputs[0], node.inputs[0])

    def src(key):
        return alias.get(key, key)

    consumers = collections.Counter(src(k) for node in plan for k in node.inputs if node.output not in alias)
    nodes, made = [], {}  # made: key -> the node producing it

    def add(node):
        nodes.append(node)
        made[node.key] = node
        return node.key

    def grid_of(key):
        node = made.get(key)
        if isinstance(node, Chain) and node.ops and _has_range(node.ops[-1]):
            return node.ops[-1]
        if isinstance(node, (Buffer, Crop)):
            return grid_of(node.src)
        if isinstance(node, Recurrent):
            return node.op.output
        return None

    def quantized(key, owner):
        """``key``, with a calibrated quantization point after it when its values have no grid."""
        if grid_of(key) is not None:
            return key
        node = made.get(key)
        if isinstance(node, Chain) and consumers[key] <= 1:
            node.ops.append(_calibrated(owner))
            return key
        return add(Chain(f"{key}/quantized", key, [_calibrated(owner)]))

    def state_count():
        return sum(1 if isinstance(n, Buffer) else 3 for n in nodes if isinstance(n, (Buffer, Recurrent)))

    def buffered(key, pnode):
        if not pnode.state[0]:
            return key
        key = quantized(key, pnode.layer.name)
        name = f"state_{state_count():02d}_{pnode.layer.name}"  # sorts in graph order
        return add(Buffer(f"{pnode.output}/buffered", key, name, int(pnode.state[0]), int(pnode.state[1]),
                          grid_of(key)))

    for pnode in plan:
        layer, out = pnode.layer, pnode.output
        ins = [src(k) for k in pnode.inputs]
        if out in alias:
            continue
        if pnode.kind == "input":
            add(Chain(out, None, []))
        elif pnode.kind == "identity":
            add(Crop(out, ins[0], int(layer.cropping[0])))
        elif pnode.kind == "conv":
            add(Chain(out, buffered(ins[0], pnode), _layer_ops(layer, stage)))
        elif pnode.kind == "lstm":
            try:
                op = reader.read_lstm(layer, stage)
            except UnsupportedModelError as e:
                raise UnsupportedModelError(f"{e} (streaming export)") from None
            i = state_count()
            add(Recurrent(out, quantized(ins[0], layer.name), op,
                          tuple(f"state_{i + k:02d}_{layer.name}_{part}" for k, part in enumerate(("h", "c", "step"))),
                          int(pnode.gate)))
        elif pnode.kind == "pool":
            mean = add(Mean(f"{out}/mean", buffered(ins[0], pnode)))
            add(Chain(out, mean, [_calibrated(layer.name)]))
        elif type(layer).__name__ == "Add":
            add(Join(out, [quantized(k, layer.name) for k in ins]))
        else:  # frame-wise: merge into the chain that produces its input when nothing else reads that
            ops = _layer_ops(layer, stage)
            prev = made.get(ins[0])
            if isinstance(prev, Chain) and consumers[ins[0]] == 1:
                del made[prev.key]
                prev.key = out
                prev.ops += ops
                made[out] = prev
            else:
                add(Chain(out, ins[0], ops))
    out_chain = made[src(plan[-1].output)]
    if not isinstance(out_chain, Chain):
        out_chain = made[add(Chain(f"{out_chain.key}/out", out_chain.key, []))]
    out_chain.ops.append(FakeQuantOp("<model output>", "calibrated"))
    nodes.remove(out_chain)
    nodes.append(out_chain)  # the logits last
    missing = []
    for node in nodes:
        if not isinstance(node, Chain):
            continue
        node.ops = passes.fold_batchnorm(node.ops, True)
        for i, op in enumerate(node.ops):
            ranged = grid_of(node.src) is not None or any(_has_range(o) for o in node.ops[:i])
            if isinstance(op, AffineOp) and (node.src is not None or ranged):
                raise UnsupportedModelError(f"batch-norm {op.owner!r} cannot be folded into a dense/conv layer; an "
                                            "int8 model computes a batch-norm only folded into one, or in float "
                                            "before the input quantizer")
            if isinstance(op, LinearOp):
                missing += [] if ranged else [f"{op.owner} (input)"]
                missing += [] if op.codes is not None else [f"{op.owner} (kernel)"]
    if missing:
        raise UnsupportedModelError(
            f"model {model.name!r} is not a QAT model the int8 export can use; these layers lack the quantizers it "
            f"needs: {', '.join(dict.fromkeys(missing))}. Build it with a quantization recipe (e.g. 'tanh4') and "
            "train it into stage 2.")
    _, window, n_mels = model.input_shape
    return StreamGraph(model, nodes, stream.hop, int(n_mels), int(window), int(stream.first_valid_step))


def stream_windows(graph: StreamGraph, windows: np.ndarray):
    """Hops of ``windows [n, window, n_mels]`` in stream order: ``(frames [steps, n, hop, n_mels], offset)``; the
    first ``window % hop`` frames (which the window model crops) are skipped."""
    offset, steps = graph.window % graph.hop, graph.window_steps
    x = np.asarray(windows, np.float32)[:, offset:offset + steps * graph.hop]
    return x.reshape(len(x), steps, graph.hop, graph.n_mels).transpose(1, 0, 2, 3)


def calibrate(graph: StreamGraph, windows, margin: float) -> None:
    """Set the range of every calibrated quantization point: streamed over ``windows`` from zero state, the min/max
    of its input over the steps from ``first_valid_step`` on (from an LSTM's gate on, when earlier), widened by
    ``margin`` of the span on each side (and to contain 0). Points are set in graph order, each seeing the ones
    before it quantized."""
    points = graph.calibration_points()
    hops = stream_windows(graph, windows)
    # an LSTM's output grid sees every step from its gate on (its state at the window's end depends on all of them)
    start = min([graph.first_valid_step] + [n.gate for n in graph.nodes if isinstance(n, Recurrent)])
    for point in points:
        record, states = {}, graph.initial_state(hops.shape[1])
        for t, frames in enumerate(hops):
            _, states = graph.step(frames, states, record if t >= start else None)
        vals = np.concatenate([np.asarray(v).ravel() for v in record[id(point)]])
        lo, hi = float(vals.min()), float(vals.max())
        span = max(hi - lo, 1e-6)
        point.lo, point.hi = min(lo - margin * span, 0.0), max(hi + margin * span, 0.0)
