"""One precedence rule for layer-name patterns (kws_quant.models.patterns), the same in recipe overrides
(recipes.spec_for) and per-layer maps (asr_ext.quant.bits_map)."""
import pytest

from asr_ext.quant.bits_map import resolve
from kws_quant.models.patterns import by_precedence, escape_pattern, specificity
from kws_quant.models.recipes import spec_for

NAMES = ["dense_in", "dense_1", "dense_out", "conv[1]"]


def test_exact_beats_wildcard_more_literals_beat_fewer_first_written_wins_a_tie():
    assert specificity("dense_in") == (True, 8) and specificity("dense_*") == (False, 6)
    assert specificity(escape_pattern("conv[1]")) == (True, 7)
    assert by_precedence(["dense_in", "*", "dense_*"]) == ["*", "dense_*", "dense_in"]
    assert by_precedence(["dense*", "d*_in"]) == ["d*_in", "dense*"]  # 5 literal characters beat 4
    assert by_precedence(["dens?_*", "*nse_?n"]) == ["*nse_?n", "dens?_*"]  # 5 literals each: the first wins


@pytest.mark.parametrize("order", [0, 1])
def test_recipes_and_bits_maps_resolve_alike_whatever_the_order_written(order):
    """Recipes used the last matching override before: {"dense_in": 1-bit, "*": 4-bit} gave dense_in 4 bits."""
    overrides = [("dense_in", 1), ("*", 4), ("dense_*", 5), (escape_pattern("conv[1]"), 3)]
    if order:
        overrides = overrides[::-1]
    bits_map = dict(overrides)
    recipe = {"kernel": "tanh(bits=8)", "layers": {p: {"kernel": f"tanh(bits={b})"} for p, b in overrides}}
    expected = {"dense_in": 1, "dense_1": 5, "dense_out": 5, "conv[1]": 3}
    assert resolve(bits_map, NAMES) == expected
    assert {n: spec_for(recipe, n, "kernel") for n in NAMES} == {n: f"tanh(bits={b})" for n, b in expected.items()}


def test_an_override_without_the_role_does_not_hide_a_less_specific_one():
    recipe = {"bias": "linear(bits=8)", "layers": {"*": {"bias": "linear(bits=4)"}, "dense_in": {"kernel": "x"}}}
    assert spec_for(recipe, "dense_in", "bias") == "linear(bits=4)"
    assert spec_for(recipe, "dense_in", "kernel") == "x" and spec_for(recipe, "dense_1", "kernel") is None


def _bits_by_layer_role(model):
    return {(layer.name, role): q.bits for layer in model.layers if hasattr(layer, "quantizers")
            for role, q in layer.quantizers.items()}


@pytest.mark.parametrize("arch", ["dnn", "crnn"])
def test_every_recipe_role_sets_the_layer_role_of_the_same_name(arch):
    """One vocabulary: a recipe's ``kernel/bias/gain/offset/output`` reach the layers' roles of those names, its
    ``input`` the model's input quantizer (``input_quant``, a quantized activation, so its role is ``output``)."""
    from kws_quant.models import KWSModelConfig, build_kws_model

    bits = {"kernel": 3, "bias": 7, "gain": 6, "offset": 5, "output": 4, "input": 8}
    recipe = {role: f"linear(bits={b})" for role, b in bits.items()}
    model = build_kws_model(KWSModelConfig(arch=arch), 3, recipe)
    seen = _bits_by_layer_role(model)
    assert {role for _, role in seen} >= {"kernel", "bias", "gain", "offset", "output"}
    for (name, role), b in seen.items():
        expected = bits["input"] if name == "input_quant" else bits["kernel" if role == "recurrent_kernel" else role]
        assert b == expected, (name, role)


def test_old_role_names_are_read_with_a_warning_and_build_the_same_model():
    from kws_quant.models import KWSModelConfig, build_kws_model
    from kws_quant.models.recipes import get_recipe

    new = {"kernel": "tanh(bits=4)", "output": "linear(bits=6)", "gain": "linear(bits=5)", "offset": "linear(bits=7)",
           "layers": {"act_1": {"output": "linear(bits=3)"}}}
    old = {"kernel": "tanh(bits=4)", "activation": "linear(bits=6)", "bn_gain": "linear(bits=5)",
           "bn_offset": "linear(bits=7)", "layers": {"act_1": {"activation": "linear(bits=3)"}}}
    with pytest.warns(DeprecationWarning, match=r"'activation'.*'output'"):
        assert get_recipe(old) == new
    config = KWSModelConfig()
    with pytest.warns(DeprecationWarning):
        old_model = build_kws_model(config, 3, old)
    assert _bits_by_layer_role(old_model) == _bits_by_layer_role(build_kws_model(config, 3, new))
    with pytest.raises(ValueError, match="both 'bn_gain' and 'gain'"):
        get_recipe({"gain": "linear(bits=8)", "bn_gain": "linear(bits=4)"})
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['activations'\]"):
        get_recipe({"layers": {"act_*": {"activations": "linear(bits=4)"}}})
