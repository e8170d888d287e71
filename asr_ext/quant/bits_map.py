"""Per-layer maps from layer-name patterns to bit widths (or any per-layer value), and recipes built from them.

A map such as ``{"dense_in": 1, "*": 4}`` assigns every candidate layer the value of its matching pattern that wins
under the precedence rule of :mod:`kws_quant.models.patterns` (the one recipes use too): an exact name beats a
wildcard, more literal characters beat fewer, the first written wins a tie. A layer no pattern matches is left
alone (float, or whatever the base recipe says). A pattern that matches no candidate layer raises ``ValueError``: a
typo must not silently quantize nothing. A plain value (``4``) instead of a dict applies to every candidate layer.
"""
from __future__ import annotations

import copy

import keras

from kws_quant.models.patterns import by_precedence, escape_pattern, matches  # noqa: F401 (escape_pattern: re-exported)



def layer_names(layers) -> list[str]:
    """Names of candidate layers: a model (its layers that take a kernel quantizer), or an iterable of names."""
    if isinstance(layers, keras.layers.Layer):
        return [layer.name for layer in kernel_layers(layers)]
    names = list(layers)
    if not all(isinstance(n, str) for n in names):
        raise ValueError("layers must be a Keras model or an iterable of layer names (str)")
    return names


def kernel_layers(model) -> list:
    """Every quantized layer of ``model`` (nested models included) that has a ``kernel`` quantizer role."""
    from kws_quant.layers import quant_layers

    return [layer for layer in quant_layers(model) if "kernel" in layer.ROLES]


def resolve(mapping, names, what: str = "bits map") -> dict:
    """``{layer name: value}`` for every name some pattern of ``mapping`` matches (see the module docstring).

    Args:
        mapping: ``{pattern: value}``, or a single value for every name.
        names: candidate layer names (or a model: see :func:`layer_names`).
        what: how error messages call the map.

    Raises:
        ValueError: a pattern matches no candidate layer, a key is not a string, or there are no candidates.
    """
    names = layer_names(names)
    if not isinstance(mapping, dict):
        if not names:
            raise ValueError(f"{what}: there is no candidate layer (no quantized layer with a kernel)")
        return {n: mapping for n in names}
    return {n: values[-1] for n, values in matching(mapping, names, what).items()}


def matching(mapping: dict, names, what: str = "bits map") -> dict:
    """``{layer name: [values of every matching pattern, least specific first]}`` (names no pattern matches are
    left out). Raises ``ValueError`` for a pattern that matches no name."""
    names = layer_names(names)
    if not names:
        raise ValueError(f"{what}: there is no candidate layer (no quantized layer with a kernel)")
    if not isinstance(mapping, dict):
        raise ValueError(f"{what}: expected a dict {{layer-name pattern: value}}, got {type(mapping).__name__}")
    hits = {}
    for pattern in mapping:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{what}: key {pattern!r} is not a layer-name pattern (a non-empty str)")
        hits[pattern] = {n for n in names if matches(pattern, n)}
        if not hits[pattern]:
            raise ValueError(f"{what}: pattern {pattern!r} matches no layer; layers: {', '.join(names)}")
    ranked = by_precedence(mapping)
    out = {}
    for n in names:
        values = [mapping[p] for p in ranked if n in hits[p]]
        if values:
            out[n] = values
    return out


def recipe_from_map(mapping, layers, make_spec, base_recipe: dict | None = None, role: str = "kernel",
                    what: str = "bits map") -> dict:
    """A recipe (:mod:`kws_quant.models.recipes` format) whose ``layers`` give each matched layer ``make_spec(value)``.

    Args:
        mapping: ``{pattern: value}`` or one value (see :func:`resolve`).
        layers: a model or the candidate layer names.
        make_spec: ``value -> spec`` (a registry spec string or quantizer), e.g. ``lambda b: f"gq(bits={b})"``;
            it is called once per layer and should raise ``ValueError`` for a bad value.
        base_recipe: a recipe dict to extend (copied, never modified); its other roles stay.
        role: the recipe role to set (``"kernel"``).

    Returns:
        The recipe. Each matched layer gets an override under its escaped exact name, which beats every wildcard
        override of the base recipe (:mod:`kws_quant.models.patterns`).
    """
    values = resolve(mapping, layers, what)
    recipe = copy.deepcopy(dict(base_recipe or {}))
    overrides = dict(recipe.get("layers") or {})
    for name, value in values.items():
        key = escape_pattern(name)
        entry = dict(overrides.pop(key, {}))
        entry[role] = make_spec(value)
        overrides[key] = entry
    recipe["layers"] = overrides
    return recipe


def layer_specs(recipe: dict, layers, role: str = "kernel") -> dict:
    """``{layer name: spec}`` that ``spec_for`` gives ``role`` of each candidate layer (``None`` left out)."""
    from kws_quant.models.recipes import spec_for

    out = {}
    for n in layer_names(layers):
        spec = spec_for(recipe, n, role)
        if spec is not None:
            out[n] = spec
    return out
