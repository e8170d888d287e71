"""Quantization recipes: *what* to quantize in a model, by role and layer name, kept apart from *how* (quantizers).

A recipe maps roles to registry specs, with per-layer overrides matched by ``fnmatch`` patterns on layer names:

    {"kernel": "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')",
     "bias": "linear(bits=8)", "input": "linear(bits=8)", "activation": "linear(bits=8)",
     "bn_gain": "linear(bits=8)", "bn_offset": "linear(bits=8)",
     "layers": {"dense_out": {"kernel": "tanh(bits=8, mode='symmetric', per_channel=True, output_scale='max')"}}}

Roles: ``kernel``, ``bias`` (dense/conv), ``input`` (the model's input quantizer), ``activation`` (after each
non-linearity), ``bn_gain``, ``bn_offset`` (folded batch-norm). A missing role is float. When several ``layers``
patterns set a role of one layer, the most specific wins (:mod:`kws_quant.models.patterns`: an exact name beats a
wildcard, more literal characters beat fewer, the first written wins a tie).
"""
from __future__ import annotations

from kws_quant import quantizers as qz
from kws_quant.models.patterns import by_precedence, matches

RECIPE_ROLES = ("kernel", "bias", "input", "activation", "bn_gain", "bn_offset")


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


_LINEAR8_REST = {"bias": "linear(bits=8)", "input": "linear(bits=8)", "activation": "linear(bits=8)",
                 "bn_gain": "linear(bits=8)", "bn_offset": "linear(bits=8)"}

PRESETS = {
    "float": lambda: {},
    "tanh8": lambda: tanh_recipe(8),
    "tanh5": lambda: tanh_recipe(5),
    "tanh4": lambda: tanh_recipe(4),
    "tanh4-edge8": lambda: tanh_recipe(4, edge_bits=8),
    "tanh1": lambda: tanh_recipe(1),
    "linear8": lambda: dict(_LINEAR8_REST, kernel="linear(bits=8, per_channel=True)"),
}


def get_recipe(recipe) -> dict:
    """A preset name (``"float"``, ``"tanh4"``, …) or a recipe dict → a validated recipe dict."""
    if isinstance(recipe, str):
        if recipe not in PRESETS:
            raise ValueError(f"unknown quantization recipe {recipe!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[recipe]()
    recipe = dict(recipe or {})
    unknown = set(recipe) - set(RECIPE_ROLES) - {"layers"}
    if unknown:
        raise ValueError(f"recipe has unknown role(s) {sorted(unknown)}; roles: {', '.join(RECIPE_ROLES)}, layers")
    for pattern, roles in (recipe.get("layers") or {}).items():
        bad = set(roles) - set(RECIPE_ROLES)
        if bad:
            raise ValueError(f"recipe layers[{pattern!r}] has unknown role(s) {sorted(bad)}; "
                             f"roles: {', '.join(RECIPE_ROLES)}")
    for spec in _all_specs(recipe):
        qz.get(spec)  # raises a clear ValueError for a bad spec
    return recipe


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


def check_patterns_match(recipe: dict, layer_names) -> None:
    """Raise if an override pattern matches no layer (a typo would otherwise silently quantize nothing)."""
    for pattern in recipe.get("layers") or {}:
        if not any(matches(pattern, n) for n in layer_names):
            raise ValueError(f"recipe pattern {pattern!r} matches no layer; layers: {', '.join(layer_names)}")
