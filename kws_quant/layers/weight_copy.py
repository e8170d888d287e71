"""Copying weights between two models by layer and variable name: a float model into its QAT twin, a trained model
into a re-quantized clone. The one weight-copy function of the project (the KWS and ASR phases use it)."""
from __future__ import annotations

from collections.abc import Iterable

import keras
from keras import ops


def all_layers(model) -> list:
    """Every layer inside ``model`` (nested models and the sublayers of layers included; not ``model`` itself), in
    order. The one use of Keras' private ``_flatten_layers``: Keras 3 has no public way to list nested sublayers."""
    return list(model._flatten_layers(include_self=False))


def copy_weights(src, dst, skip: Iterable[str] = ()) -> int:
    """Copy each variable of ``src``'s layers into the same-named variable of the same-named layer of ``dst``.

    Layers are matched by name over all nested layers (names must be unique in each model; models themselves are
    walked, not matched), variables by the last component of their path; variables named in ``skip`` (e.g. the QAT
    stage flag) and variables only ``dst`` has (new quantizer state) keep their values. Returns the number of
    variables copied.

    Raises:
        ValueError: a layer name occurs twice in one model, or a shared variable's shape differs (naming both).
    """
    skip = set(skip)

    def by_name(model):
        out = {}
        for layer in all_layers(model):
            if isinstance(layer, keras.Model):
                continue
            if layer.name in out:
                raise ValueError(f"copy_weights: layer name {layer.name!r} occurs twice in {model.name!r}")
            out[layer.name] = layer
        return out

    theirs = by_name(dst)
    copied = 0
    for name, layer in by_name(src).items():
        target = theirs.get(name)
        if target is None:
            continue
        variables = {v.path.split("/")[-1]: v for v in target.variables}
        for v in layer.variables:
            key = v.path.split("/")[-1]
            if key in variables and key not in skip:
                if tuple(variables[key].shape) != tuple(v.shape):
                    raise ValueError(f"copy_weights: {name}/{key} has shape {tuple(v.shape)} in the source and "
                                     f"{tuple(variables[key].shape)} in the target")
                variables[key].assign(ops.convert_to_numpy(v))
                copied += 1
    return copied
