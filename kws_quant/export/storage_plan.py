"""The storage plan of a quantized model: what each tensor is stored as, in how many bits, under which deployment
preset; shared by the bit-packed export (:mod:`kws_quant.export.packing`), the LiteRT exporter and the memory
projections of :mod:`eval.memory`, so that every size they report is the size of the same plan.

Storage rules:
- A quantized tensor is stored as three *segments*: its codes, its scale (float32, the shape the quantizer's
  :class:`~kws_quant.quantizers.IntegerCodes` has: ``()`` per tensor or ``(channels,)`` per channel) and, only for
  unsigned grids (dorefa, asymmetric linear), its zero point (float32, its own shape). Signed grids have zero point 0.
- Codes are stored as unsigned offsets ``u = code - min_code`` with ``min_code = -2^(b-1)`` for signed grids and 0
  for unsigned ones (``b``: the quantizer's bits), so both pack the same way; ``u`` is written in
  ``storage_bits >= b`` bits (the preset's deployment width).
- Values are packed LSB-first into a bit stream (value ``i`` occupies stream bits ``[i·s, (i+1)·s)``, values may
  straddle words), and the stream is cut into little-endian words of ``word_bits``.
- Every segment is rounded up to whole words on its own: ``ceil(count·bits / word_bits)`` words
  (:func:`segment_nbytes`), zero-padded, so every segment starts on a word boundary.
- A codebook-quantized tensor (:class:`~kws_quant.quantizers.CodebookCodes`: S8BQAT, GQ) is stored as its
  ``b``-bit indices (unsigned, in ``storage_bits``) and its codebook (``2^b`` float32 values).
- An unquantized (float) tensor is one segment of float32 values (32 bits each).
- Batch-norm directly after a dense/conv layer (its only consumer, no activation or output quantizer between, a
  kernel that is not codebook-quantized: one codebook per tensor cannot absorb per-channel gains) is folded: its
  gain multiplies the linear layer's per-channel scale (codes unchanged, scale becomes ``scale·gain``, float32
  ``(channels,)``), its offset becomes the bias. Without a bias of its own the layer's bias
  *is* the offset (its codes, scale and bits); with one, ``gain·bias + offset`` is not on any grid and is stored
  float32. A batch-norm with no such predecessor (e.g. the KWS model's ``bn_in``) is stored standalone.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kws_quant.layers import QuantActivation, QuantBatchNormalization, QuantConv1D, QuantConv2D, QuantDense
from kws_quant.layers.base import QuantLayer
from kws_quant.quantizers import CodebookCodes, IntegerCodes

WORD_BITS = (8, 16, 32, 64)
FLOAT_BITS = 32
_LINEAR_OPS = (QuantDense, QuantConv1D, QuantConv2D)
_ADDITIVE_ROLES = ("bias", "offset")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# -- presets -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MemoryPreset:
    """How a deployment target stores weights. The preset defines deployment widths; the model defines the codes.

    Attributes:
        name: label in reports.
        kernel_bits: widths (bits per value) the target packs kernels at; a kernel is stored at the smallest width
            ``>=`` its quantizer's bits (``nna-5bit`` on a tanh4 model: 5). ``None``: at its quantizer's bits.
            A kernel whose quantizer bits exceed every width raises (it would silently lose precision).
        bias_bits: width of biases and batch-norm offsets (32: int32 accumulator words); ``None``: the quantizer's
            bits. Smaller than the quantizer's bits raises.
        packed: ``True``: values bit-packed at their width; ``False``: each value takes the smallest container
            of 8, 16 or 32 bits that holds its width (the ARM NEON int8 layout: a 4-bit weight takes a byte).
        word_bits: word size every payload segment is rounded up to, one of 8, 16, 32, 64.

    Float (unquantized) tensors are float32 in every preset.
    """

    name: str = "custom"
    kernel_bits: tuple | None = None
    bias_bits: int | None = None
    packed: bool = True
    word_bits: int = 32

    def __post_init__(self):
        if self.word_bits not in WORD_BITS:
            raise ValueError(f"memory preset {self.name!r}: word_bits={self.word_bits!r} is not allowed; "
                             f"allowed: {', '.join(map(str, WORD_BITS))}")
        if self.kernel_bits is not None:
            widths = tuple(self.kernel_bits) if isinstance(self.kernel_bits, (list, tuple)) else (self.kernel_bits,)
            if not widths or not all(_is_int(w) and 1 <= w <= 8 for w in widths):
                raise ValueError(f"memory preset {self.name!r}: kernel_bits={self.kernel_bits!r} is not allowed; "
                                 "allowed: None or integers 1..8")
            object.__setattr__(self, "kernel_bits", tuple(sorted(int(w) for w in widths)))
        if self.bias_bits is not None and not (_is_int(self.bias_bits) and 1 <= self.bias_bits <= 32):
            raise ValueError(f"memory preset {self.name!r}: bias_bits={self.bias_bits!r} is not allowed; "
                             "allowed: None or an integer 1..32")
        if not isinstance(self.packed, bool):
            raise ValueError(f"memory preset {self.name!r}: packed={self.packed!r} is not allowed; "
                             "allowed: True, False")

    def width(self, layer: str, role: str, bits: int) -> int:
        """Bits per stored value of a quantized tensor whose quantizer has ``bits``."""
        if role.endswith("kernel") and self.kernel_bits is not None:  # an LSTM's recurrent_kernel too
            fits = [w for w in self.kernel_bits if w >= bits]
            if not fits:
                raise ValueError(f"layer {layer!r} {role}: the model's quantizer has {bits} bits, more than preset "
                                 f"{self.name!r} stores (kernel_bits={self.kernel_bits}); packing would lose "
                                 "precision: use a wider preset or quantize the model to fewer bits")
            width = fits[0]
        elif role in _ADDITIVE_ROLES and self.bias_bits is not None:
            if self.bias_bits < bits:
                raise ValueError(f"layer {layer!r} {role}: the model's quantizer has {bits} bits, more than preset "
                                 f"{self.name!r} stores (bias_bits={self.bias_bits}); packing would lose precision")
            width = self.bias_bits
        else:
            width = bits
        return width if self.packed else next(c for c in (8, 16, 32) if c >= width)


MEMORY_PRESETS = {
    "arm-neon": MemoryPreset("arm-neon", packed=False),
    "nna-1bit": MemoryPreset("nna-1bit", kernel_bits=(1, 8), bias_bits=32),
    "nna-5bit": MemoryPreset("nna-5bit", kernel_bits=(5, 8), bias_bits=32),
}
"""``arm-neon``: int8 containers for every quantized value (``packed=True``: bit-packed at the quantizer's bits);
``nna-1bit``/``nna-5bit``: kernels bit-packed at 1 or 5 bits (8 for the 8-bit first/last layers), biases and
batch-norm offsets in int32 accumulator words."""

PRESETS = MEMORY_PRESETS  # the name before MEMORY_PRESETS, kept for old imports


def get_preset(preset="arm-neon", word_bits: int | None = None, packed: bool | None = None) -> MemoryPreset:
    """A preset name, :class:`MemoryPreset` or dict of its fields → a validated preset, with optional overrides."""
    if isinstance(preset, str):
        if preset not in MEMORY_PRESETS:
            raise ValueError(f"unknown memory preset {preset!r}; presets: {', '.join(MEMORY_PRESETS)}")
        preset = MEMORY_PRESETS[preset]
    elif isinstance(preset, dict):
        fields = {f.name for f in dataclasses.fields(MemoryPreset)}
        unknown = sorted(set(preset) - fields)
        if unknown:
            raise ValueError(f"memory preset has unknown field(s) {unknown}; fields: {', '.join(sorted(fields))}")
        preset = MemoryPreset(**preset)
    elif not isinstance(preset, MemoryPreset):
        raise ValueError(f"cannot interpret {preset!r} as a memory preset; expected one of {', '.join(MEMORY_PRESETS)}, "
                         "a MemoryPreset or a dict of its fields")
    overrides = {k: v for k, v in (("word_bits", word_bits), ("packed", packed)) if v is not None}
    return dataclasses.replace(preset, **overrides) if overrides else preset


# -- sizes: the one place -----------------------------------------------------------------------------------------
def segment_nbytes(count: int, bits: int, word_bits: int) -> int:
    """Bytes of ``count`` values of ``bits`` bits, bit-packed and rounded up to whole ``word_bits`` words."""
    words = -(-int(count) * int(bits) // int(word_bits))
    return words * int(word_bits) // 8


@dataclasses.dataclass
class StoredTensor:
    """One weight tensor of the payload.

    Attributes:
        role: its role in the deployed layer (``kernel``, ``bias``, ``gain``, ``offset`` or a float variable's name).
        source: the model tensor(s) it comes from, e.g. ``"dense_in.kernel*bn_0.gain"``.
        quantizer: the quantizer's repr, ``None`` when float.
        bits: the quantizer's bits (32 when float).
        storage_bits: bits per stored value (the preset's deployment width).
        codes: integer codes or codebook indices (:class:`CodebookCodes`), ``None`` when float.
        values: float32 values (``codes.dequantize()`` when quantized), the tensor's shape.
    """

    role: str
    source: str
    quantizer: str | None
    bits: int
    storage_bits: int
    codes: IntegerCodes | None
    values: np.ndarray

    @property
    def count(self) -> int:
        return int(self.values.size)

    def segments(self) -> dict:
        """``{segment: (count, bits)}`` in payload order: codes, then scale and zero point (unsigned grids) or the
        codebook; float values for a float tensor."""
        if self.codes is None:
            return {"values": (self.count, FLOAT_BITS)}
        if isinstance(self.codes, CodebookCodes):
            return {"codes": (self.count, self.storage_bits), "codebook": (int(self.codes.codebook.size), FLOAT_BITS)}
        seg = {"codes": (self.count, self.storage_bits), "scale": (int(self.codes.scale.size), FLOAT_BITS)}
        if not self.codes.signed:
            seg["zero_point"] = (int(np.size(self.codes.zero_point)), FLOAT_BITS)
        return seg

    def nbytes(self, word_bits: int) -> dict:
        """``{segment: bytes}``: what :func:`pack` writes and :func:`eval.memory.project_memory` reports."""
        return {k: segment_nbytes(n, b, word_bits) for k, (n, b) in self.segments().items()}


# -- the model's deployment plan -------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerPlan:
    """One layer of the deployed model (batch dimension excluded from shapes).

    Attributes:
        name, type: the Keras layer's name and class name.
        input_shapes, output_shape: per-example shapes of the buffers it reads and writes (a layer with a folded
            batch-norm writes the batch-norm's output).
        input_bits, output_bits: bits per activation value of those buffers (see :func:`plan_model`).
        activation: the layer's activation function name, if it has one.
        quantizers: ``{role: repr}`` of the layer's quantizers.
        tensors: stored weight tensors, in payload order.
        folded_bn: the batch-norm folded into this layer; folded_into: the layer this batch-norm is folded into.
    """

    name: str
    type: str
    input_shapes: list
    output_shape: tuple
    input_bits: list
    output_bits: int
    activation: str | None
    quantizers: dict
    tensors: list
    folded_bn: str | None = None
    folded_into: str | None = None
    front_end: bool = False


def plan_model(model: keras.Model, preset="arm-neon") -> list[LayerPlan]:
    """Every non-input layer of a built functional/Sequential ``model``, in order, with what the payload stores.

    Bits come from the model's own quantizers (``layer.quantizers[role].bits``), codes from
    ``layer.quantized_weights()``; the preset only sets storage widths (:meth:`MemoryPreset.width`).
    Activation bits: a layer with an ``output`` quantizer writes at its bits; a parameter-free Keras layer
    (pooling, flatten, dropout, ...) keeps the widest of its inputs; any other layer writes 32 bits
    (accumulators / float). Model inputs: :func:`model_input_bits`.

    Raises:
        ValueError: a nested model, or a kernel/bias wider than the preset stores.
    """
    preset = get_preset(preset)
    layers = _layers(model)
    consumers = _consumers(layers)
    for t in model.outputs:  # a model output is read outside the model: never fold it away
        consumers.setdefault(id(t), []).append(None)
    producer = {id(t): layer for layer in layers for t in _as_list(layer.output)}
    bits = {id(t): b for t, b in zip(model.inputs, model_input_bits(model))}
    folds = {}  # batch-norm name -> the linear layer it folds into
    for layer in layers:
        src = producer.get(id(layer.input)) if not isinstance(layer.input, list) else None
        if isinstance(layer, QuantBatchNormalization) and _foldable(src, layer, consumers):
            folds[layer.name] = src
    folded_bn = {linear.name: next(x for x in layers if x.name == bn) for bn, linear in folds.items()}

    front_end = _front_end_names(model, consumers)
    plans = []
    for layer in layers:
        ins = _as_list(layer.input)
        in_bits = [bits[id(t)] for t in ins]
        out_bits = _output_bits(layer, in_bits)
        for t in _as_list(layer.output):
            bits[id(t)] = out_bits
        bn = folded_bn.get(layer.name)  # the fused layer writes the batch-norm's output
        plans.append(LayerPlan(
            name=layer.name, type=type(layer).__name__, input_shapes=[tuple(t.shape[1:]) for t in ins],
            output_shape=tuple((bn or layer).output.shape[1:]), input_bits=in_bits,
            output_bits=_output_bits(bn, [out_bits]) if bn else out_bits, activation=_activation_name(layer),
            quantizers=_quantizer_reprs(layer),
            tensors=[] if layer.name in folds else _stored_tensors(layer, bn, preset),
            folded_bn=bn.name if bn else None, folded_into=folds[layer.name].name if layer.name in folds else None,
            front_end=layer.name in front_end))
    return plans


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _layers(model) -> list:
    """The model's layers without its input layers; raises for nested models."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in layers:
        if isinstance(layer, keras.Model):
            raise ValueError(f"layer {layer.name!r} is a nested model; memory plans need a flat model")
    return layers


def _consumers(layers) -> dict:
    """``{id(tensor): [layers reading it]}``."""
    consumers = {}
    for layer in layers:
        for t in _as_list(layer.input):
            consumers.setdefault(id(t), []).append(layer)
    return consumers


def model_input_bits(model: keras.Model) -> list[int]:
    """Bits of each model input buffer: those of the quantizer that first reads it (a consumer's ``input``
    quantizer or an identity :class:`QuantActivation`'s), 32 if none. Per-frame layers in between (a batch-norm
    without output quantizer, CMVN; an average pooling over time) are the front end's (:func:`_is_front_end`):
    frames are buffered after the quantizer behind them.
    """
    consumers = _consumers(_layers(model))
    return [_reader_bits(consumers.get(id(t), []), consumers) for t in model.inputs]


def _reader_bits(readers, consumers) -> int:
    for layer in readers:
        q = layer.quantizers.get("input") if isinstance(layer, QuantLayer) else None
        if q is None and isinstance(layer, QuantActivation) and layer.activation is keras.activations.linear:
            q = layer.quantizers.get("output")
        if q is None and _is_front_end(layer, consumers):
            return _reader_bits(consumers.get(id(layer.output), []), consumers)
        if q is not None:
            return q.bits
    return FLOAT_BITS


def _front_end_names(model, consumers) -> set:
    """Layers a deployment runs per frame before the window buffer: per-frame layers on the model input
    (:func:`_is_front_end`) and the identity quantizer that reads the input or their output."""
    names, frontier = set(), [t for t in model.inputs]
    while frontier:
        for layer in consumers.get(id(frontier.pop()), []):
            if layer is None:
                continue
            if _is_front_end(layer, consumers):
                names.add(layer.name)
                frontier.append(layer.output)
            elif isinstance(layer, QuantActivation) and layer.activation is keras.activations.linear:
                names.add(layer.name)
    return names


def is_per_frame(layer) -> bool:
    """Whether a deployment can run ``layer`` in its float front end, frame by frame, before frames enter the
    window buffer: a batch-norm with no input/output quantizer (per-frame normalisation, CMVN) or a 'valid'
    channels-last ``AveragePooling1D`` whose stride is its size (a running sum of ``pool_size`` frames). The one
    definition that the memory plan and the LiteRT exporter's split front end
    (:func:`kws_quant.export.tflite.reader.split_front_end`) share."""
    if isinstance(layer, (QuantBatchNormalization, keras.layers.BatchNormalization)):
        return not (isinstance(layer, QuantLayer) and ({"input", "output"} & set(layer.quantizers)))
    return (isinstance(layer, keras.layers.AveragePooling1D) and layer.padding == "valid"
            and layer.data_format == "channels_last" and tuple(layer.strides) == tuple(layer.pool_size))


def _is_front_end(layer, consumers) -> bool:
    """A per-frame layer (:func:`is_per_frame`) whose output reaches a quantizer through per-frame layers only."""
    return is_per_frame(layer) and _reader_bits(consumers.get(id(layer.output), []), consumers) != FLOAT_BITS


def _output_bits(layer, input_bits) -> int:
    if isinstance(layer, QuantLayer) and "output" in layer.quantizers:
        return layer.quantizers["output"].bits
    if isinstance(layer, QuantLayer) or layer.weights:
        return FLOAT_BITS
    return max(input_bits)


def _foldable(linear, bn, consumers) -> bool:
    """BN folds into ``linear`` when it is the linear layer's only reader and nothing sits between them."""
    return (isinstance(linear, _LINEAR_OPS) and linear.activation is keras.activations.linear
            and "output" not in linear.quantizers and "input" not in bn.quantizers
            and len(consumers.get(id(linear.output), [])) == 1
            and not isinstance(linear.quantized_weights().get("kernel"), CodebookCodes))


def _activation_name(layer) -> str | None:
    fn = getattr(layer, "activation", None)
    return keras.activations.serialize(fn) if callable(fn) else None


def _quantizer_reprs(layer) -> dict:
    return {role: repr(q) for role, q in layer.quantizers.items()} if isinstance(layer, QuantLayer) else {}


def _layer_weights(layer) -> dict:
    """``{role: (IntegerCodes | None, float32 array, quantizer | None)}`` of one layer, unfolded."""
    if not isinstance(layer, QuantLayer):
        return {v.name: (None, np.asarray(keras.ops.convert_to_numpy(v), np.float32), None) for v in layer.weights}
    codes = layer.quantized_weights()
    out = {}
    for role, t in layer.weight_tensors().items():
        q = layer.quantizers.get(role)
        c = codes.get(role)
        values = c.dequantize() if c is not None else np.asarray(keras.ops.convert_to_numpy(t), np.float32)
        out[role] = (c, values, q)
    return out


def _stored_tensors(layer, bn, preset) -> list[StoredTensor]:
    weights = _layer_weights(layer)
    sources = {role: f"{layer.name}.{role}" for role in weights}
    if bn is not None:
        weights, sources = _fold(layer.name, weights, bn)
    tensors = []
    for role, (codes, values, q) in weights.items():
        if codes is None:
            tensors.append(StoredTensor(role, sources[role], None, FLOAT_BITS, FLOAT_BITS, None, values))
            continue
        width = preset.width(layer.name, role, q.bits)
        tensors.append(StoredTensor(role, sources[role], repr(q), q.bits, width, codes, values))
    return tensors


def _fold(name, weights, bn):
    """Fold ``bn``'s gain into the kernel's per-channel scale and its offset into the bias (module docstring)."""
    bnw = _layer_weights(bn)
    _, gain, _ = bnw["gain"]
    k_codes, k_values, k_q = weights["kernel"]
    if k_codes is None:
        kernel = (None, (k_values * gain).astype(np.float32), None)
    else:
        scale = (np.broadcast_to(k_codes.scale, gain.shape) * gain).astype(np.float32)
        zero_point = np.zeros_like(scale) if k_codes.signed else k_codes.zero_point
        folded = IntegerCodes(k_codes.codes, scale, zero_point, k_codes.bits, k_codes.signed)
        kernel = (folded, folded.dequantize(), k_q)
    sources = {"kernel": f"{name}.kernel*{bn.name}.gain"}
    if "bias" in weights:
        bias = (weights["bias"][1] * gain + bnw["offset"][1]).astype(np.float32)
        sources["bias"] = f"{name}.bias*{bn.name}.gain+{bn.name}.offset"
        return {"kernel": kernel, "bias": (None, bias, None)}, sources
    sources["bias"] = f"{bn.name}.offset"
    return {"kernel": kernel, "bias": bnw["offset"]}, sources
