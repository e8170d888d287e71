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
