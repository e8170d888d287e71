"""The ASR papers' methods on the KWS model: every asr_ext method applies to build_kws_model as it does to the RNN-T,
trains under the two-stage schedule without NaNs, and saves/loads to identical predictions."""
import keras
import numpy as np
import pytest

from asr_ext import quant as aq
from kws_quant import qat
from kws_quant.models import KWSModelConfig, build_kws_model
from kws_quant.models.recipes import RECIPE_PRESETS
from kws_quant.experiments.training import transfer_weights

CFG = KWSModelConfig(window_frames=8, n_mels=6, pool=2, hidden=(16, 12), dropout=0.0)
REST8 = {role: spec for role, spec in RECIPE_PRESETS["linear8"]().items() if role != "kernel"}


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 6)).astype(np.float32)
    return x, (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0.3).astype(np.int32)


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(0)
    model = build_kws_model(CFG, 3)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(*_data(), epochs=2, batch_size=32, verbose=0)
    return model


def _twin(float_model, recipe):
    model = build_kws_model(CFG, 3, recipe=recipe)
    transfer_weights(float_model, model)
    return model


def s8bqat(float_model):
    return _twin(float_model, aq.fit_centroids(float_model, 5, base_recipe=REST8)), [
        aq.MRACosWarmup(0.5, warmup_steps=2), aq.HardCompressor(every=2)]


def gq_mixed(float_model):
    recipe = aq.gq_recipe({"dense_in": 1, "*": 4}, float_model, base_recipe=REST8)
    return _twin(float_model, recipe), [aq.TemperatureAnnealing(4)]


def native(float_model):
    return aq.to_native_int(_twin(float_model, "linear8"), {"dense_in": (8, 8), "*": (4, 8)}, act_range="ema"), []


def nna(float_model):
    return aq.to_nna(_twin(float_model, "linear8"), "*"), []


@pytest.mark.slow
@pytest.mark.parametrize("method", [s8bqat, gq_mixed, native, nna], ids=lambda f: f.__name__)
def test_method_trains_on_the_kws_model_and_round_trips(float_model, method, tmp_path):
    keras.utils.set_random_seed(1)
    model, callbacks = method(float_model)
    x, y = _data(seed=1)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    hist = model.fit(x, y, epochs=2, batch_size=32, verbose=0,
                     callbacks=[qat.TwoStageQAT(stage1_at=0, stage2_at=1, verbose=False), *callbacks])
    assert all(np.isfinite(hist.history["loss"])) and qat.get_stage(model) == 2
    if method is gq_mixed:
        aq.set_gq_hard(model)
    # it still solves the task it was initialised for (the float model's accuracy, within a few points)
    acc = lambda m: float(np.mean(np.argmax(m.predict(x, verbose=0), 1) == y))  # noqa: E731
    assert acc(model) >= acc(float_model) - 0.15, (acc(model), acc(float_model))
    path = tmp_path / f"{method.__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
    kinds = {type(layer).__name__ for layer in loaded.layers}
    expected = {"native": "NativeIntDense", "nna": "NNADense"}.get(method.__name__, "QuantDense")
    assert expected in kinds, kinds
