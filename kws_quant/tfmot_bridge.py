"""TF-MOT bridge: our tanh and linear quantizers (METHODS §1, §2) inside TensorFlow Model Optimization QAT, for
legacy ``tf_keras`` models.

Install the extra (``pip install "kws-quant[tfmot]"``: tensorflow-model-optimization 0.8.x and tf-keras 2.21) and
run in a **legacy-Keras process**: set ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, so that
``tf.keras`` is ``tf_keras``, the Keras TF-MOT 0.8 works with. The rest of kws-quant never imports this module (nor
TF-MOT), so Keras 3 code is never switched to legacy mode behind its back.

    import os; os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from kws_quant import tfmot_bridge as bridge

    model = tf.keras.Sequential([
        tf.keras.Input((40,)),
        bridge.annotate(tf.keras.layers.Dense(64, activation="relu"),
                        kernel="tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')",
                        activation="linear(bits=8)"),
        bridge.annotate(tf.keras.layers.Dense(10), kernel="tanh(bits=8, mode='symmetric')", bias="linear(bits=8)"),
    ])
    qat_model = bridge.quantize_apply(model)      # TF-MOT's quantize_apply inside quantize_scope
    ...fit...
    w_q = bridge.quantized_weights(qat_model.layers[0])["kernel"]   # what the forward pass used

TF-MOT's default scheme also puts its own 8-bit quantizer (``QuantizeLayer`` with ``AllValuesQuantizer``) on the
model input; our quantizers apply to what the annotated layers' configs name (kernel, bias, activation, output).

Numerics: one implementation. Each TF-MOT :class:`BridgeQuantizer` holds a quantizer from our registry
(``kws_quant.quantizers.get(spec)``, the same specs as the recipes) and calls its ``observe``/``fake_quant``: the
tanh formula with its straight-through gradient, the linear grids, the moving-average ranges (created on the
``tf_keras`` layer through a small adapter) and the frozen ranges at inference are exactly what the Keras 3 layers
use. Importing :mod:`kws_quant.quantizers` does not bring a new Keras into the legacy process: TF-MOT 0.8 itself
imports Keras 3 (``keras.src.layers``) on import, so it is already there; our Keras-3 *layers* are never used on
``tf_keras`` tensors, only the quantizers' tensor math (``keras.ops`` on the TensorFlow backend, i.e. TF ops).
"""
from __future__ import annotations

import tensorflow as tf

if not tf.keras.__name__.startswith("tf_keras"):  # pragma: no cover - depends on the process
    raise ImportError("kws_quant.tfmot_bridge needs a legacy-Keras process: set TF_USE_LEGACY_KERAS=1 before "
                      "TensorFlow is imported, and install kws-quant[tfmot] (tensorflow-model-optimization 0.8.x, "
                      f"tf-keras 2.21); tf.keras is {tf.keras.__name__} here")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

from kws_quant import quantizers as qz  # noqa: E402

__all__ = ["BridgeQuantizer", "KWSQuantizeConfig", "annotate", "custom_objects", "latent_weights", "quantize_apply",
           "quantized_weights"]

_tfmot_q = tfmot.quantization.keras


class _StateLayer:
    """What our quantizers' ``build(layer, shape, role)`` needs from a layer, on a ``tf_keras`` layer: ``add_weight``
    with Keras 3 keyword arguments, translated (names prefixed so two quantized tensors of one layer never clash)."""

    _AGGREGATION = {"mean": tf.VariableAggregation.MEAN, "sum": tf.VariableAggregation.SUM,
                    "only_first_replica": tf.VariableAggregation.ONLY_FIRST_REPLICA, None: tf.VariableAggregation.NONE}

    def __init__(self, layer, prefix: str):
        self._layer, self._prefix = layer, prefix

    def add_weight(self, name, shape=(), initializer="zeros", trainable=False, dtype="float32", aggregation=None,
                   autocast=None, **_):
        return self._layer.add_weight(name=f"{self._prefix}_{name}", shape=tuple(shape), dtype=dtype,
                                      initializer=initializer, trainable=trainable,
                                      aggregation=self._AGGREGATION.get(aggregation, tf.VariableAggregation.NONE))


class BridgeQuantizer(_tfmot_q.quantizers.Quantizer):
    """A TF-MOT ``Quantizer`` that applies one of our quantizers (any registry spec) to a weight or activation.

    Args:
        spec: a registry spec: ``"tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')"``,
            ``"linear(bits=8)"``, a config dict, …
        role: the tensor's role, which fixes what the quantizer does by default (METHODS §2): ``"kernel"``,
            ``"bias"`` (weights: range from the current value, symmetric) or ``"output"`` (data: moving-average
            range, asymmetric, updated in training only).
    """

    def __init__(self, spec, role: str = "kernel"):
        if role not in qz.WEIGHT_ROLES + qz.DATA_ROLES:
            raise ValueError(f"BridgeQuantizer: role={role!r} is not allowed; allowed: "
                             f"{', '.join(qz.WEIGHT_ROLES + qz.DATA_ROLES)}")
        self.quantizer = qz.get(spec)
        if self.quantizer is None:
            raise ValueError("BridgeQuantizer: spec=None quantizes nothing; leave the tensor out of the config")
        self.role = role

    def build(self, tensor_shape, name, layer):
        shape = () if tensor_shape is None else tuple(tensor_shape)
        return self.quantizer.build(_StateLayer(layer, name), shape, self.role)

    @tf.autograph.experimental.do_not_convert  # tensor math only (no Python control flow on tensors)
    def __call__(self, inputs, training, weights, **kwargs):
        # TF-MOT calls this once per branch of its own smart_cond, so `training` is a Python bool here
        self.quantizer.observe(inputs, weights, bool(training))
        return self.quantizer.fake_quant(inputs, weights)

    def get_config(self):
        return {"spec": qz.serialize(self.quantizer), "role": self.role}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, BridgeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class KWSQuantizeConfig(_tfmot_q.QuantizeConfig):
    """Which tensors of a Dense/Conv layer get which of our quantizers (``None``: left in float).

    Args:
        kernel, bias: specs for the layer's ``kernel`` / ``bias`` (weights).
        activation: spec applied after the layer's activation (TF-MOT supports linear and ReLU-type activations
            there); moving-average range by default.
        output: spec for the layer's output (after everything), moving-average range by default.
    """

    def __init__(self, kernel=None, bias=None, activation=None, output=None):
        self.specs = {"kernel": kernel, "bias": bias, "activation": activation, "output": output}
        self._q = {k: (BridgeQuantizer(v, "output" if k in ("activation", "output") else k) if v is not None else None)
                   for k, v in self.specs.items()}

    def _weights(self, layer):
        return [(role, getattr(layer, role)) for role in ("kernel", "bias")
                if self._q[role] is not None and getattr(layer, role, None) is not None]

    def get_weights_and_quantizers(self, layer):
        return [(w, self._q[role]) for role, w in self._weights(layer)]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, self._q["activation"])] if self._q["activation"] is not None else []

    def set_quantize_weights(self, layer, quantize_weights):
        for (role, _), w in zip(self._weights(layer), quantize_weights):
            setattr(layer, role, w)

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return [self._q["output"]] if self._q["output"] is not None else []

    def get_config(self):
        return {k: (qz.serialize(q.quantizer) if q is not None else None) for k, q in self._q.items()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def custom_objects() -> dict:
    """The classes ``tfmot.quantization.keras.quantize_scope`` / ``tf.keras.models.load_model`` need."""
    return {"BridgeQuantizer": BridgeQuantizer, "KWSQuantizeConfig": KWSQuantizeConfig}


def annotate(layer, kernel=None, bias=None, activation=None, output=None):
    """``tfmot.quantization.keras.quantize_annotate_layer`` with a :class:`KWSQuantizeConfig` of these specs."""
    return _tfmot_q.quantize_annotate_layer(layer, KWSQuantizeConfig(kernel, bias, activation, output))


def quantize_apply(model, **kwargs):
    """``tfmot.quantization.keras.quantize_apply`` inside a ``quantize_scope`` that knows our classes. Layers that
    were not annotated stay float."""
    with _tfmot_q.quantize_scope(custom_objects()):
        return _tfmot_q.quantize_apply(model, **kwargs)


def latent_weights(wrapper) -> dict:
    """``{role: numpy}`` of the float (latent) weights a TF-MOT ``QuantizeWrapper`` quantizes: after
    ``quantize_apply`` the wrapped layer's ``kernel`` attribute is the quantized tensor, not the variable."""
    return {role: np.asarray(weight) for role, (weight, _, _) in zip(_roles(wrapper), wrapper._weight_vars)}


def _roles(wrapper) -> list:
    config = wrapper.quantize_config
    if isinstance(config, KWSQuantizeConfig):
        return [role for role, _ in config._weights(wrapper.layer)]
    return [weight.name.split("/")[-1].split(":")[0] for weight, _, _ in wrapper._weight_vars]


def quantized_weights(wrapper, codes: bool = False) -> dict:
    """``{role: value}`` of a TF-MOT ``QuantizeWrapper``'s quantized weights as the forward pass uses them at
    inference (numpy), or their :class:`~kws_quant.quantizers.IntegerCodes` with ``codes=True``."""
    out = {}
    for role, (weight, quantizer, state) in zip(_roles(wrapper), wrapper._weight_vars):
        if not isinstance(quantizer, BridgeQuantizer):
            out[role] = np.asarray(quantizer(weight, False, state))
        elif codes:
            out[role] = quantizer.quantizer.codes(np.asarray(weight), state)
        else:
            out[role] = np.asarray(quantizer.quantizer.fake_quant(tf.convert_to_tensor(weight), state))
    return out

