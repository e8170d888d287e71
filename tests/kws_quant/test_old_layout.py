"""``.keras`` files saved by the layout before the redesign (issue 14; commit b11e2cf, tests/data/old_layout/) still
load with ``import kws_quant`` and compute what they computed then."""
import os

import keras
import numpy as np
import pytest

import kws_quant  # noqa: F401  (registers the layers)
from kws_quant import qat

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "old_layout")


@pytest.mark.parametrize("arch", ["dnn", "tcresnet", "crnn"])
def test_models_saved_before_the_redesign_load_and_compute_the_same(arch):
    saved = np.load(os.path.join(DATA, "io.npz"))
    model = keras.saving.load_model(os.path.join(DATA, f"{arch}_tanh4.keras"))
    assert qat.get_stage(model) == 2
    # another code version (or CPU) may order float operations differently, so a tolerance, not bit equality; and
    # where a sum lands on an activation code's rounding tie, that code moves by one step and its row's logits by
    # more than 1e-5: at most one of the 16 rows may do so, and every row keeps its class
    out = np.asarray(model(saved["x"], training=False))
    close = np.all(np.isclose(out, saved[arch], rtol=1e-5, atol=1e-5), axis=1)
    assert close.sum() >= len(close) - 1, np.abs(out - saved[arch]).max(axis=1)
    np.testing.assert_array_equal(out.argmax(1), saved[arch].argmax(1))
    assert {role for layer in model.layers for role in getattr(layer, "quantizers", {})} >= {"kernel", "output"}
