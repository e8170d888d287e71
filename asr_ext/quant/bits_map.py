"""Per-layer maps from layer-name patterns to bit widths (or any per-layer value), and recipes built from them.

A map such as ``{"dense_in": 1, "*": 4}`` assigns every candidate layer the value of its *most specific* matching
pattern (``fnmatch`` syntax, case-sensitive):

1. a pattern equal to the layer name beats any wildcard pattern;
2. among wildcard patterns, the one with more literal (non-wildcard) characters wins (``"dense_*"`` over ``"*"``);
3. on a tie, the pattern written first in the map wins.

So ``{"dense_in": 1, "*": 4}`` and ``{"*": 4, "dense_in": 1}`` mean the same. A layer no pattern matches is left
alone (float, or whatever the base recipe says). A pattern that matches no candidate layer raises ``ValueError``: a
typo must not silently quantize nothing. A plain value (``4``) instead of a dict applies to every candidate layer.

Note: :func:`kws_quant.models.recipes.spec_for` resolves its ``layers`` overrides differently (the last matching
override wins); recipes produced here therefore use exact (escaped) layer names, where both rules agree.
"""
from __future__ import annotations

import copy
import fnmatch
import re

import keras

_ESCAPED = re.compile(r"\[([^\]!])\]")  # "[*]", "[?]", "[[]" or "[x]": one literal character
_WILDCARDS = re.compile(r"[*?]|\[[^\]]*\]")


def escape_pattern(name: str) -> str:
    """An ``fnmatch`` pattern that matches exactly ``name`` (``*``, ``?`` and ``[`` bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _specificity(pattern: str) -> tuple[bool, int]:
    """``(is an exact name, number of literal characters)``; escaped single characters count as literals."""
    parts = _ESCAPED.split(pattern)  # even items: raw text, odd items: escaped literal characters
    raw = "".join(parts[0::2])
    literal = len(_WILDCARDS.sub("", raw)) + len(parts[1::2])
    return (_WILDCARDS.search(raw) is None, literal)


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
    ranked = []
    for order, (pattern, value) in enumerate(mapping.items()):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{what}: key {pattern!r} is not a layer-name pattern (a non-empty str)")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"{what}: pattern {pattern!r} matches no layer; layers: {', '.join(names)}")
        ranked.append((*_specificity(pattern), -order, pattern, value, set(hits)))
    out = {}
    for n in names:
        hits = sorted((r for r in ranked if n in r[5]), key=lambda r: r[:3])
        if hits:
            out[n] = [r[4] for r in hits]
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
        The recipe. Each matched layer gets an override under its escaped exact name, placed after every override of
        the base recipe, so it wins under ``spec_for``'s last-match rule.
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
