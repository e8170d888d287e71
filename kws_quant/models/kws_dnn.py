"""The KWS model builder: the paper's streaming, state-free feed-forward model (Zeng et al. 2022: ~250K parameters),
a strided TDNN variant, and the zoo's DS-CNN, TC-ResNet and CRNN (:mod:`kws_quant.models.zoo`).

All map one window of stacked log-mel frames ``[window_frames, n_mels]`` to keyword-class logits ``[num_classes]``
(keywords plus non-keyword classes). The DNN streams by re-running on a sliding window
(:mod:`kws_quant.models.streaming`); the zoo models also convert to frame-synchronous models with state
(:func:`kws_quant.models.stream_state.to_streaming`). Every layer is a quantized layer whose specs come from a recipe
(:mod:`kws_quant.models.recipes`), so the float model and its QAT twins share one definition.
"""
from __future__ import annotations

import dataclasses
import functools

import keras

from kws_quant.layers import QuantActivation, QuantBatchNormalization, QuantConv1D, QuantDense
from kws_quant.models import zoo
from kws_quant.models.recipes import check_patterns_match, get_recipe, quantizer_kwargs, spec_for

ARCHS = ("dnn", "tdnn") + zoo.ZOO_ARCHS


@dataclasses.dataclass
class KWSModelConfig:
    """Architecture of a KWS model.

    Attributes:
        arch: ``"dnn"`` (the paper's feed-forward model: pooled stacked frames → dense+BN+ReLU blocks), ``"tdnn"``
            (strided 1-D convolutions over time, then dense; fewer MACs per window), or a streaming zoo model
            ``"dscnn"``, ``"tcresnet"``, ``"crnn"`` (:mod:`kws_quant.models.zoo`).
        window_frames: frames per input window (98 = 1 s at a 10 ms hop with 25 ms windows).
        n_mels: log-mel bins per frame.
        pool: average-pool this many adjacent frames before the first dense layer (dnn), in float, before the
            input quantizer.
        quantize_before_pool: put the input quantizer before the pooling instead (the layout before 2026-12): the
            pooling then averages quantized frames into half steps of the input grid, which an int8 export cannot
            hold (it rounds them: ~0.5% of its logits land up to ~1.5 output steps from the Keras model).
        hidden: widths of the dense blocks (dnn), conv filters (tdnn) or the zoo model's blocks; ``None`` or empty:
            the arch's default (``zoo.ARCH_DEFAULTS``; (112, 112, 112) for dnn/tdnn).
        dropout: dropout after each hidden block, in training.
        kernel_size: zoo: taps of the depthwise (dscnn) or stem (crnn) convolutions; 0: the arch's default.
        hop: zoo: time stride of the first convolution = frames per streaming step.
    """

    arch: str = "dnn"
    window_frames: int = 98
    n_mels: int = 40
    pool: int = 2
    hidden: tuple | None = None
    dropout: float = 0.1
    quantize_before_pool: bool = False
    kernel_size: int = 0
    hop: int = 2

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model arch={self.arch!r} is not allowed; allowed: {', '.join(map(repr, ARCHS))}")
        defaults = zoo.ARCH_DEFAULTS.get(self.arch, dict(hidden=(112, 112, 112), kernel_size=0))
        if not self.hidden:
            self.hidden = defaults["hidden"]
        if not self.kernel_size:
            self.kernel_size = defaults["kernel_size"]
        for name in ("window_frames", "n_mels", "pool", "hop"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"model {name}={v!r} must be a positive integer")
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) <= 0:
            raise ValueError(f"model hidden={self.hidden!r} must be a non-empty list of positive widths")
        minimum = {"dscnn": 1, "tcresnet": 1, "crnn": 2}.get(self.arch, 1)
        if len(self.hidden) < minimum or (self.arch in zoo.ZOO_ARCHS and self.kernel_size < 1):
            raise ValueError(f"model arch={self.arch!r}: hidden={self.hidden} needs at least {minimum} widths and "
                             f"kernel_size={self.kernel_size} at least 1")
        if self.arch in zoo.ZOO_ARCHS:
            zoo.check_window(self.arch, self.window_frames, self.hidden, self.kernel_size, self.hop)


def build_kws_model(config: KWSModelConfig, num_classes: int, recipe="float", name: str = "kws") -> keras.Model:
    """Build the model. Input ``[batch, window_frames, n_mels]`` log-mel; output ``[batch, num_classes]`` logits.

    Layer names (for recipe overrides): ``bn_in`` (per-mel normalisation), ``input_quant``, ``dense_in`` (first
    linear layer),
    ``dense_<i>``/``conv_<i>``, ``bn_<i>``, ``act_<i>``, ``dense_out``; the zoo's in :mod:`kws_quant.models.zoo`.
    """
    recipe = get_recipe(recipe)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be at least 2 (keywords plus a non-keyword class)")

    q = functools.partial(quantizer_kwargs, recipe)  # q(layer name, *roles) -> <role>_quantizer kwargs

    inp = keras.Input((config.window_frames, config.n_mels), name="logmel")
    # Learned per-mel-bin normalisation (CMVN), the frame pooling (dnn), then the input quantizer: everything after
    # it is integer. Pooling before the quantizer keeps the average exact: an int8 model cannot hold the half step
    # that averaging two quantized frames makes, so the Keras model and its int8 export would round it differently.
    x = QuantBatchNormalization(name="bn_in", **q("bn_in", "gain", "offset"))(inp)
    if config.arch in zoo.ZOO_ARCHS:
        used = zoo.check_window(config.arch, config.window_frames, config.hidden, config.kernel_size, config.hop)
        if used < config.window_frames:  # the last output frame ends on the window's last frame
            x = keras.layers.Cropping1D((config.window_frames - used, 0), name="align")(x)
        x = QuantActivation(name="input_quant", quantizer=spec_for(recipe, "input_quant", "input"))(x)
        x = zoo.build_zoo_body(x, config.arch, config.hidden, config.kernel_size, config.hop, config.dropout, recipe)
        return _finish(inp, x, num_classes, recipe, q, name)
    pool = config.arch == "dnn" and config.pool > 1
    if pool and not config.quantize_before_pool:
        x = keras.layers.AveragePooling1D(config.pool, name="pool")(x)
    x = QuantActivation(name="input_quant", quantizer=spec_for(recipe, "input_quant", "input"))(x)
    if pool and config.quantize_before_pool:
        x = keras.layers.AveragePooling1D(config.pool, name="pool")(x)
    names = []
    if config.arch == "dnn":
        x = keras.layers.Flatten(name="flatten")(x)
        for i, width in enumerate(config.hidden):
            lname = "dense_in" if i == 0 else f"dense_{i}"
            x = QuantDense(width, use_bias=False, name=lname, **q(lname, "kernel"))(x)
            x = _block_tail(x, i, recipe, q, config.dropout)
            names.append(lname)
    else:
        for i, filters in enumerate(config.hidden):
            lname = "dense_in" if i == 0 else f"conv_{i}"
            x = QuantConv1D(filters, 5 if i == 0 else 3, strides=2, use_bias=False, name=lname,
                            **q(lname, "kernel"))(x)
            x = _block_tail(x, i, recipe, q, config.dropout)
            names.append(lname)
        x = keras.layers.Flatten(name="flatten")(x)
    return _finish(inp, x, num_classes, recipe, q, name)


def _finish(inp, x, num_classes, recipe, q, name):
    out = QuantDense(num_classes, name="dense_out", **q("dense_out", "kernel", "bias"))(x)
    model = keras.Model(inp, out, name=name)
    check_patterns_match(recipe, [layer.name for layer in model.layers])
    return model


def _block_tail(x, i, recipe, q, dropout):
    x = QuantBatchNormalization(name=f"bn_{i}", **q(f"bn_{i}", "gain", "offset"))(x)
    x = QuantActivation("relu", name=f"act_{i}", quantizer=spec_for(recipe, f"act_{i}", "output"))(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return x
