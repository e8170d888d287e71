"""Re-quantize an existing Functional/Sequential model built from ``kws_quant`` layers, keeping its weights.

Recipes (:mod:`kws_quant.models.recipes`) are applied when a model is *built*; these helpers produce the QAT twin of
a model that already exists (a trained float model, a KWS or RNN-T network): the model is cloned
(``keras.models.clone_model``, nested Functional/Sequential models included), the chosen layers are re-created from
their config with new quantizer specs (or as another layer class), and every variable is copied by layer name and
variable name; variables that exist only in the new model (new quantizer state) keep their initial values.
Subclassed models cannot be cloned this way: build their QAT twin from a recipe instead.
"""
from __future__ import annotations

import keras

from asr_ext.quant import bits_map as bm
from kws_quant import quantizers as qz
from kws_quant.layers import QuantActivation, copy_weights, quant_layers


def clone_replacing(model, replace, copy: bool = True) -> keras.Model:
    """Clone ``model``; ``replace(layer)`` returns a new layer to use instead, or ``None`` to clone it as is."""
    if not isinstance(model, keras.Model) or not (model.__class__ in (keras.Model, keras.Sequential)
                                                  or type(model).__name__ in ("Functional", "Sequential")):
        raise ValueError(f"cannot clone {type(model).__name__} {getattr(model, 'name', '')!r}: only Functional and "
                         "Sequential models can be re-quantized in place; build a subclassed model from a recipe")

    def fn(layer):
        new = replace(layer)
        return new if new is not None else layer.__class__.from_config(layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=fn, recursive=True)
    if copy:
        copy_weights(model, new_model)
    return new_model


def with_quantizers(model, layer_specs: dict, copy: bool = True) -> keras.Model:
    """A copy of ``model`` whose matched quantized layers get new quantizer specs, weights copied.

    Args:
        model: a Functional/Sequential model of ``kws_quant`` layers (e.g. the trained float model).
        layer_specs: ``{layer-name pattern: {role: spec}}`` with the layers' own roles (``kernel``, ``bias``,
            ``input``, ``output``, ``gain``, ``offset``); when several patterns match a layer, the more specific one
            wins per role (:mod:`asr_ext.quant.bits_map`). The ``"layers"`` entry of a recipe made by
            :func:`asr_ext.quant.fit_centroids` or :func:`asr_ext.quant.gq_recipe` is such a dict.

    Raises:
        ValueError: a pattern matching no quantized layer, a role the layer does not have, a bad spec.
    """
    if not isinstance(layer_specs, dict):
        raise ValueError("with_quantizers: layer_specs must be a dict {layer-name pattern: {role: spec}}")
    names = [layer.name for layer in quant_layers(model)]
    matches = bm.matching(layer_specs, names, what="with_quantizers layer specs")
    by_name = {layer.name: layer for layer in quant_layers(model)}
    resolved = {}
    for name, entries in matches.items():
        roles = {}
        for entry in entries:  # least specific first: later (more specific) entries override
            if not isinstance(entry, dict):
                raise ValueError(f"with_quantizers: the specs for layer {name!r} must be a dict {{role: spec}}; "
                                 f"got {entry!r}")
            roles.update(entry)
        layer = by_name[name]
        bad = set(roles) - set(layer.ROLES)
        if bad:
            raise ValueError(f"with_quantizers: layer {name!r} ({type(layer).__name__}) has no role {sorted(bad)}; "
                             f"roles: {layer.ROLES}")
        resolved[name] = {role: qz.serialize(qz.get(spec)) for role, spec in roles.items()}

    def replace(layer):
        if layer.name not in resolved or layer is not by_name.get(layer.name):
            return None
        config = layer.get_config()
        for role, spec in resolved[layer.name].items():
            key = "quantizer" if isinstance(layer, QuantActivation) and role == "output" else f"{role}_quantizer"
            config[key] = spec
        return layer.__class__.from_config(config)

    return clone_replacing(model, replace, copy=copy)
