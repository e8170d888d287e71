"""Quantization recipes: *what* to quantize in a model, by role and layer name, kept apart from *how* (quantizers).

A recipe maps roles to registry specs, with per-layer overrides matched by ``fnmatch`` patterns on layer names:

    {"kernel": "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')",
     "bias": "linear(bits=8)", "input": "linear(bits=8)", "output": "linear(bits=8)",
     "gain": "linear(bits=8)", "offset": "linear(bits=8)",
     "layers": {"dense_out": {"kernel": "tanh(bits=8, mode='symmetric', per_channel=True, output_scale='max')"}}}

Roles are the layers' own (:class:`kws_quant.layers.QuantLayer`, ``<role>_quantizer``; one vocabulary from recipe to
layer to export): ``kernel`` and ``bias`` (dense, conv, LSTM), ``gain`` and ``offset`` (batch-norm, folded at export),
``output`` (every quantized non-linearity's output: ReLU, swish, tanh, LSTM outputs) and ``input`` (the model's input
quantizer, the ``input_quant`` layer; the layers' own ``input`` roles are not set by recipes; an LSTM's
``recurrent_kernel`` takes the ``kernel`` spec). A missing role is float. The names before this vocabulary
(``activation``, ``bn_gain``, ``bn_offset``) are read as ``output``, ``gain``, ``offset`` with a
``DeprecationWarning``, so recipes saved in older run directories still load. When several ``layers`` patterns set
a role of one layer, the most specific wins (:mod:`kws_quant.models.patterns`: an exact name beats a wildcard, more
literal characters beat fewer, the first written wins a tie).
"""
from __future__ import annotations

import warnings

from kws_quant import quantizers as qz
from kws_quant.models.patterns import by_precedence, matches

RECIPE_ROLES = ("kernel", "bias", "gain", "offset", "input", "output")
ROLE_ALIASES = {"activation": "output", "bn_gain": "gain", "bn_offset": "offset"}  # the names before one vocabulary


def tanh_recipe(bits: int, edge_bits: int | None = None) -> dict:
    """The paper's recipe: tanh weights at ``bits``, 8-bit linear inputs, activations, biases and batch-norm.

    b ≥ 2 uses the symmetric grid with per-channel max scaling (integer codes export to int8 TFLite); b = 1 uses the
    DoReFa grid {-1, +1} times the per-channel max, for NNA bit-packed export. ``edge_bits`` keeps the first and last
    linear layers at another precision (a common accuracy safeguard; it costs memory: ``dense_in`` holds ~88% of
    the 250K model's weights). Batch-norm gain/offset use one scale per tensor (they fold into the adjacent layer's
    per-channel scales at export).
    """

    def tanh(b):
        mode = "symmetric" if b >= 2 else "dorefa"
        return f"tanh(bits={b}, mode='{mode}', per_channel=True, output_scale='max')"

    recipe = dict(_LINEAR8_REST, kernel=tanh(bits), layers={})
    if edge_bits is not None and edge_bits != bits:
        recipe["layers"] = {"dense_in": {"kernel": tanh(edge_bits)}, "dense_out": {"kernel": tanh(edge_bits)}}
    return recipe


_LINEAR8_REST = {"bias": "linear(bits=8)", "input": "linear(bits=8)", "output": "linear(bits=8)",
                 "gain": "linear(bits=8)", "offset": "linear(bits=8)"}

RECIPE_PRESETS = {
    "float": lambda: {},
    "tanh8": lambda: tanh_recipe(8),
    "tanh5": lambda: tanh_recipe(5),
    "tanh4": lambda: tanh_recipe(4),
    "tanh4-edge8": lambda: tanh_recipe(4, edge_bits=8),
    "tanh1": lambda: tanh_recipe(1),
    "linear8": lambda: dict(_LINEAR8_REST, kernel="linear(bits=8, per_channel=True)"),
}

PRESETS = RECIPE_PRESETS  # the name before RECIPE_PRESETS (kws_quant.models.PRESETS), kept for old imports


def get_recipe(recipe) -> dict:
    """A preset name (``"float"``, ``"tanh4"``, …) or a recipe dict → a validated recipe dict in the layers' role
    names (old names translated, see the module docstring)."""
    if isinstance(recipe, str):
        if recipe not in RECIPE_PRESETS:
            raise ValueError(f"unknown quantization recipe {recipe!r}; presets: {', '.join(RECIPE_PRESETS)}")
        return RECIPE_PRESETS[recipe]()
    recipe = _translated(dict(recipe or {}), "recipe")
    unknown = set(recipe) - set(RECIPE_ROLES) - {"layers"}
    if unknown:
        raise ValueError(f"recipe has unknown role(s) {sorted(unknown)}; roles: {', '.join(RECIPE_ROLES)}, layers")
    layers = {}
    for pattern, roles in (recipe.get("layers") or {}).items():
        roles = _translated(dict(roles), f"recipe layers[{pattern!r}]")
        bad = set(roles) - set(RECIPE_ROLES)
        if bad:
            raise ValueError(f"recipe layers[{pattern!r}] has unknown role(s) {sorted(bad)}; "
                             f"roles: {', '.join(RECIPE_ROLES)}")
        layers[pattern] = roles
    if "layers" in recipe:
        recipe["layers"] = layers
    for spec in _all_specs(recipe):
        qz.get(spec)  # raises a clear ValueError for a bad spec
    return recipe


def _translated(roles: dict, where: str) -> dict:
    """``roles`` with the old role names renamed (a warning names them); both names of one role is an error."""
    old = [k for k in roles if k in ROLE_ALIASES]
    if not old:
        return roles
    clash = [k for k in old if ROLE_ALIASES[k] in roles]
    if clash:
        raise ValueError(f"{where} sets both {clash[0]!r} and {ROLE_ALIASES[clash[0]]!r}, the old and the new name of "
                         "one role; keep the new one")
    warnings.warn(f"{where}: role name(s) {old} are the old names of {[ROLE_ALIASES[k] for k in old]}; "
                  "use the layers' role names", DeprecationWarning, stacklevel=3)
    return {ROLE_ALIASES.get(k, k): v for k, v in roles.items()}


def _all_specs(recipe):
    yield from (recipe[r] for r in RECIPE_ROLES if r in recipe)
    for roles in (recipe.get("layers") or {}).values():
        yield from roles.values()


def spec_for(recipe: dict, layer_name: str, role: str):
    """The spec for ``role`` of layer ``layer_name``: that of the winning override among those that match the layer and
    set the role (:mod:`kws_quant.models.patterns`: an exact name beats a wildcard, more literal characters beat
    fewer, the first written wins a tie), else the recipe's default."""
    overrides = recipe.get("layers") or {}
    candidates = [p for p, roles in overrides.items() if matches(p, layer_name) and role in roles]
    return overrides[by_precedence(candidates)[-1]][role] if candidates else recipe.get(role)


def quantizer_kwargs(recipe: dict, layer_name: str, *roles: str) -> dict:
    """``{"<role>_quantizer": spec}`` for ``roles`` of layer ``layer_name``: a quantized layer's constructor
    arguments (``spec_for`` per role)."""
    return {f"{role}_quantizer": spec_for(recipe, layer_name, role) for role in roles}


def check_patterns_match(recipe: dict, layer_names) -> None:
    """Raise if an override pattern matches no layer (a typo would otherwise silently quantize nothing)."""
    for pattern in recipe.get("layers") or {}:
        if not any(matches(pattern, n) for n in layer_names):
            raise ValueError(f"recipe pattern {pattern!r} matches no layer; layers: {', '.join(layer_names)}")
