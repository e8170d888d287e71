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
    # another code version: float operations may be ordered differently, so a tolerance, not bit equality
    np.testing.assert_allclose(np.asarray(model(saved["x"], training=False)), saved[arch], rtol=1e-5, atol=1e-5)
    assert {role for layer in model.layers for role in getattr(layer, "quantizers", {})} >= {"kernel", "output"}
