"""QAT methods of the ASR experiment beyond plain recipes (``config.qat.methods``; docs/asr_methods.md).

Every method phase starts from the trained float model of its encoder and trains with the two-stage schedule of
the recipe phases (``config.train.stage1_epochs`` weights quantized, then ``stage2_epochs`` everything; a method
kind may set its own, ``config.qat.<kind>.stage_epochs``). A name selects one:

==========================  ===========================================================================================
``linear8``, ``tanh4``, …   a :mod:`kws_quant.models.recipes` preset (the same as ``config.qat.recipes``)
``s8bqat<b>``               S8BQAT (METHODS §4-5): per-tensor Lloyd-Max codebooks of ``2^b`` centroids fitted on the
                            float model (LSTM recurrent kernels get their own), MRACos regularizer with λ ramped up,
                            hard compressor every ``compress_every`` steps, export as b-bit indices + codebooks
``gq<b>``                   General Quantizer (METHODS §6): learnable μ-law codebook per tensor, τ annealed, then
                            hard
``gq_mixed<lo><hi>``        GQ with a bits map: ``lo`` bits for the layers ``config.qat.gq.low_bit_layers`` names (the
                            big encoder LSTM by default), ``hi`` bits for every other layer
``native<b>_conformer``     native integer QAT (METHODS §7) of the Conformer RNN-T: dense/conv products in int32 from
                            b-bit weights and ``act_bits`` activations; the LSTM predictor and depthwise convs b-bit
                            fake-quantized. Starts from a float Conformer (phase ``float_conformer`` when the
                            config's encoder is the LSTM)
``nna8``                    NNA operator emulation (METHODS §8), int8 everything (:func:`asr_ext.quant.to_nna`)
==========================  ===========================================================================================

Besides its name, every method keeps biases, the input features and activations at 8 bits (the ``linear8``
recipe's other roles). One function per method builds the phase's model and returns a :class:`Setup`: the model
(built, initialised from the float model, not compiled), its callbacks, and facts for ``metrics.json``. The S8BQAT
regularizer needs no loss wiring: each ``lloyd_max`` quantizer adds ``λ · mean R(W)`` with ``layer.add_loss`` and
``fit`` sums ``model.losses``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings

import keras

from asr_ext.models import QuantLSTM, build_rnnt
from asr_ext.quant import (NO_FLOAT_MODEL, GeneralQuantizer, HardCompressor, LloydMaxQuantizer, MRACosWarmup,
                           TemperatureAnnealing, bits_map, fit_centroids, lloyd_max, set_gq_hard, to_native_int,
                           to_nna, with_quantizers)
from eval.memory import project_memory
from kws_quant.export.packing import pack
from kws_quant.layers import quant_layers
from kws_quant.models.recipes import RECIPE_PRESETS
from kws_quant.quantizers.base import check_bits
from kws_quant.experiments.training import transfer_weights

OPTIONS = {
    "s8bqat": dict(stage_epochs=(),         # (stage 1, stage 2) epochs; (): config.train.stage1_epochs/stage2_epochs
                   lam=1.0,                 # MRACos weight λ after the warm-up
                   warmup_epochs=1.0,       # λ ramps linearly from 0 over this many epochs
                   compress_every=50,       # hard compressor period P in optimizer steps
                   snap_int8=False),        # snap each codebook to its tensor's int8 grid max|W|/127
    "gq": dict(stage_epochs=(),
               mu_init=5.0,                 # initial μ of the μ-law codebooks
               tau0_scale=1.0,              # τ0 = tau0_scale / (2^b - 1)^2 (τ is in units of s², METHODS §6)
               tau_min=1e-5,                # final temperature of the geometric annealing
               anneal_fraction=0.6,         # anneal over this fraction of the phase's steps, then hard forward
               low_bit_layers=("enc_lstm_1",)),  # gq_mixed<lo><hi>: layer-name patterns at lo bits
    "native": dict(stage_epochs=(),
                   act_bits=8,              # b_a of every native-int dense/conv layer
                   act_range="ema"),        # "ema": frozen moving-average ranges at inference; "dynamic": batch max
    "nna": dict(stage_epochs=(),
                per_channel=True,           # per-output-channel int8 weight scales
                rounding="double"),         # requantization: "double" (gemmlowp, TFLite default) or "single"
}
"""Per-method settings, ``config.qat.<method>.<key>`` (defaults; the configs may override them)."""

_REST8 = {role: spec for role, spec in RECIPE_PRESETS["linear8"]().items() if role != "kernel"}
_PATTERNS = (("s8bqat", r"s8bqat(\d+)"), ("gq_mixed", r"gq_mixed(\d)(\d)"), ("gq", r"gq(\d+)"),
             ("native", r"native(\d+)_conformer"), ("nna", r"nna(\d+)"))


@dataclasses.dataclass(frozen=True)
class Method:
    """A parsed method name: ``kind`` (recipe, s8bqat, gq, gq_mixed, native, nna), its bit widths, and the encoder
    of the float model it starts from (``None``: the config's own)."""

    name: str
    kind: str
    bits: tuple = ()
    encoder: str | None = None


@dataclasses.dataclass
class Setup:
    """What a method phase trains: ``model`` (built, initialised, not compiled), ``callbacks`` for ``fit`` and
    ``info`` (JSON-able facts for ``metrics.json``)."""

    model: keras.Model
    callbacks: list
    info: dict


def parse(name: str) -> Method:
    """Validate a method name (see the module docstring); raises ``ValueError`` naming the problem."""
    if not isinstance(name, str):
        raise ValueError(f"method {name!r} is not a name (str)")
    if name in RECIPE_PRESETS and name != "float":
        return Method(name, "recipe")
    for kind, pattern in _PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            bits = tuple(int(g) for g in m.groups())
            for b in bits:
                check_bits(f"method {name!r}", b, 2 if kind == "native" else 1, 8,
                           "native-int weights are symmetric" if kind == "native" else "")
            if kind == "nna":
                check_bits(f"method {name!r}", bits[0], 8, 8, "the NNA emulation is int8")
            return Method(name, kind, bits, "conformer" if kind == "native" else None)
    presets = ", ".join(p for p in RECIPE_PRESETS if p != "float")
    raise ValueError(f"unknown method {name!r}; methods: {presets} (recipe presets), s8bqat<b>, gq<b>, "
                     "gq_mixed<lo><hi>, native<b>_conformer, nna8 (b: bits 1..8)")


def build(name: str, cfg: dict, data, init, epochs: int, phase_dir: str) -> Setup:
    """The :class:`Setup` of method (or recipe) ``name`` for ``data`` (an ``ASRData``), from float model ``init``.

    ``epochs``: the phase's length (schedules in optimizer steps use ``epochs · data.steps_per_epoch``);
    ``phase_dir``: where the method may write exports. ``"float"`` builds the float model (``init`` ignored).
    """
    if name == "float":
        return Setup(_twin(data, "float", name, None), [], {})
    method = parse(name)
    return _BUILDERS[method.kind](method, _options(method, cfg)[1], data, init, epochs, phase_dir)


def _options(method: Method, cfg: dict) -> tuple:
    """``(config key, settings)`` of a method's kind (``{}`` for recipes)."""
    key = "gq" if method.kind == "gq_mixed" else method.kind
    return f"qat.{key}", cfg["qat"].get(key, {})


def stage_epochs(name: str, cfg: dict) -> tuple:
    """``((stage-1 epochs, stage-2 epochs), config key)`` of method ``name``'s phase: its ``stage_epochs`` setting,
    else ``config.train.stage1_epochs/stage2_epochs``."""
    key, options = _options(parse(name), cfg)
    stages = tuple(options.get("stage_epochs") or ())
    if not stages:
        return (cfg["train"]["stage1_epochs"], cfg["train"]["stage2_epochs"]), "train.stage1_epochs/stage2_epochs"
    if len(stages) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in stages):
        raise ValueError(f"config.{key}.stage_epochs={stages!r} is not allowed; allowed: () or two integers >= 0")
    return stages, f"{key}.stage_epochs"


# -- one function per method ---------------------------------------------------------------------------------------
def _twin(data, recipe, name, init) -> keras.Model:
    """The RNN-T of ``data.model_config`` built from ``recipe``, initialised from ``init`` when given."""
    model = build_rnnt(data.model_config, data.vocab.size, recipe, name=f"rnnt_{name}")
    if init is not None:
        transfer_weights(init, model)
    return model


def _recipe(method, options, data, init, epochs, phase_dir) -> Setup:
    return Setup(_twin(data, method.name, method.name, init), [], {})


def _s8bqat(method, options, data, init, epochs, phase_dir) -> Setup:
    """Codebooks from the float model; MRACos warm-up + hard compressor; packed export (indices + codebooks)."""
    if init is None:
        raise ValueError(f"method {method.name!r}: {NO_FLOAT_MODEL}: S8BQAT fits its codebooks on the trained float "
                         "model; set config.train.qat_init_from_float=True")
    (b,) = method.bits
    snap = bool(options["snap_int8"])
    recipe = fit_centroids(init, b, base_recipe=_REST8, snap_int8=snap)  # raises for an untrained model
    model = _twin(data, recipe, method.name, init)
    # the recipe's kernel spec also reaches each LSTM's recurrent kernel; give that tensor its own codebook
    recurrent = {bits_map.escape_pattern(layer.name): {"recurrent_kernel": repr(LloydMaxQuantizer(
        b, tuple(float(c) for c in lloyd_max(keras.ops.convert_to_numpy(layer.recurrent_kernel), b, snap_int8=snap))))}
        for layer in quant_layers(init) if isinstance(layer, QuantLSTM)}
    if recurrent:
        model = with_quantizers(model, recurrent)
    warmup = int(options["warmup_epochs"] * data.steps_per_epoch)
    callbacks = [MRACosWarmup(float(options["lam"]), warmup_steps=warmup),
                 HardCompressor(every=int(options["compress_every"])), PackedExport(os.path.join(phase_dir, "packed"))]
    return Setup(model, callbacks, {"mracos_lambda": options["lam"], "mracos_warmup_steps": warmup,
                                    "compress_every": options["compress_every"], "snap_int8": snap})


def _gq(method, options, data, init, epochs, phase_dir) -> Setup:
    """GQ kernels (one bit width, or ``gq_mixed``'s map) with τ annealed over ``anneal_fraction`` of the phase."""
    layers = init if init is not None else _twin(data, "float", "layers", None)
    if method.kind == "gq_mixed":
        low, high = method.bits
        mapping = {**{p: low for p in options["low_bit_layers"]}, "*": high}
    else:
        mapping = method.bits[0]

    def spec(b):
        return repr(GeneralQuantizer(bits=b, mu_init=float(options["mu_init"]),
                                     tau0=float(options["tau0_scale"]) / max(2 ** b - 1, 1) ** 2))

    recipe = bits_map.recipe_from_map(mapping, layers, spec, base_recipe=_REST8,
                                      what=f"method {method.name!r} bits map")
    model = _twin(data, recipe, method.name, init)
    steps = max(1, int(options["anneal_fraction"] * epochs * data.steps_per_epoch))
    hard = keras.callbacks.LambdaCallback(on_train_end=lambda logs: set_gq_hard(model))  # evaluate/save hard
    resolved = bits_map.resolve(mapping, layers)
    return Setup(model, [TemperatureAnnealing(steps, tau_min=float(options["tau_min"])), hard, PackedExport(
        os.path.join(phase_dir, "packed"))], {"bits_map": {k: int(v) for k, v in resolved.items()},
                                              "anneal_steps": steps})


def _native(method, options, data, init, epochs, phase_dir) -> Setup:
    """b-bit fake-quant recipe (LSTM, depthwise conv), then dense/conv1d layers → native-int (b, act_bits)."""
    (b,) = method.bits
    recipe = dict(_REST8, kernel=f"linear(bits={b}, per_channel=True)", layers={})
    model = to_native_int(_twin(data, recipe, method.name, init), (b, int(options["act_bits"])),
                          act_range=options["act_range"])
    return Setup(model, [], {"weight_bits": b, "act_bits": options["act_bits"], "act_range": options["act_range"]})


def _nna(method, options, data, init, epochs, phase_dir) -> Setup:
    """The ``linear8`` twin with every dense and LSTM layer NNA-emulated (int8 weights and activations, int32
    accumulators, fixed-point requantization, LUT sigmoid/tanh); its other 8-bit quantizers stay."""
    model = to_nna(_twin(data, "linear8", method.name, init), "*", per_channel=bool(options["per_channel"]),
                   rounding=options["rounding"])
    return Setup(model, [], {"nna_rounding": options["rounding"], "nna_per_channel": bool(options["per_channel"])})


_BUILDERS = {"recipe": _recipe, "s8bqat": _s8bqat, "gq": _gq, "gq_mixed": _gq, "native": _native, "nna": _nna}


# -- export and report ---------------------------------------------------------------------------------------------
class PackedExport(keras.callbacks.Callback):
    """When training ends, write the model's packed export (:func:`kws_quant.export.packing.pack`, ``arm-neon``
    bit-packed: every quantized tensor at its own bits; codebook tensors as indices + codebook) to ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        pack(self.model, self.path, "arm-neon", packed=True)


def weight_report(model) -> dict:
    """Bits and weight memory of ``model`` for ``metrics.json``.

    Returns ``{"weight_bits": {"<layer>.<kernel role>": bits (32 float)}, "weight_memory": {"float32_bytes",
    "int8_container_bytes", "packed_bytes", "vs_float32_packed"}}``. Memory is :func:`eval.memory.project_memory`'s
    parameter storage (kernels, biases, scales, codebooks; activations not counted: the RNN-T's depend on the
    utterance length), ``arm-neon`` (each quantized value in an 8/16/32-bit container) and bit-packed.
    """
    bits = {}
    for layer in bits_map.kernel_layers(model):
        for role in ("kernel", "recurrent_kernel"):
            if hasattr(layer, role):
                q = layer.quantizers.get(role)
                bits[f"{layer.name}.{role}"] = q.bits if q is not None else 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no quantized layers" for the float model: counted as float32, as wanted
        containers, packed = (project_memory(model, "arm-neon", packed=p, activations=False) for p in (False, True))
    total = packed.iloc[-1]
    return {"weight_bits": bits, "weight_memory": {
        "float32_bytes": int(total["float32_bytes"]),
        "int8_container_bytes": containers.attrs["summary"]["param_bytes"],
        "packed_bytes": packed.attrs["summary"]["param_bytes"], "vs_float32_packed": round(total["vs_float32"], 3)}}
