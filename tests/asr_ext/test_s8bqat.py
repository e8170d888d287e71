"""S8BQAT (METHODS §4-5): Lloyd-Max codebooks, the lloyd_max quantizer, MRACos, the hard compressor, fit_centroids."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import asr_ext.quant as aq
from asr_ext.quant import CodebookCodes, LloydMaxQuantizer, lloyd_max, mracos
from asr_ext.quant.lloyd_max import quantization_mse, uniform_grids
from kws_quant import quantizers as qz
from kws_quant.layers import QuantActivation, QuantConv1D, QuantDense
from kws_quant.models import KWSModelConfig, build_kws_model
from kws_quant.experiments.training import transfer_weights

RNG = np.random.default_rng(7)
DISTRIBUTIONS = {
    "normal": lambda n: RNG.standard_normal(n),
    "laplace": lambda n: RNG.laplace(size=n),
    "uniform": lambda n: RNG.uniform(-1, 1, n),
    "student_t3": lambda n: RNG.standard_t(3, n),
    "bimodal": lambda n: np.concatenate([RNG.normal(-1, 0.1, n // 2), RNG.normal(1, 0.3, n - n // 2)]),
    "exponential": lambda n: RNG.exponential(size=n),
    "glorot": lambda n: RNG.uniform(-0.2, 0.2, n),
}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _reference_lloyd(w, bits, tol=1e-7, max_iter=1000):
    """METHODS §4 written out plainly: quantile init, nearest-centroid cells, means, empty cells keep their centroid,
    stop on a relative MSE drop < tol."""
    x = np.asarray(w, np.float64).ravel()
    k = 2 ** bits
    c = np.quantile(x, [(j - 0.5) / k for j in range(1, k + 1)])
    prev = None
    for _ in range(max_iter + 1):
        t = [(c[j] + c[j + 1]) / 2 for j in range(k - 1)]
        cell = np.searchsorted(t, x, side="left")
        mse = np.mean((x - c[cell]) ** 2)
        if prev is not None and (prev - mse < tol * prev or mse == 0):
            break
        if mse == 0:
            break
        prev = mse
        new = c.copy()
        for j in range(k):
            if np.any(cell == j):
                new[j] = x[cell == j].mean()
        c = new
    return np.sort(c.astype(np.float32))


# -- Lloyd-Max --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_lloyd_max_mse_not_above_uniform(dist):
    for n, bits_range in ((5000, range(1, 7)), (600, (8,))):
        w = DISTRIBUTIONS[dist](n).astype(np.float32)
        for bits in bits_range:
            c = lloyd_max(w, bits)
            assert c.shape == (2 ** bits,) and c.dtype == np.float32 and np.all(np.diff(c) >= 0)
            best_uniform = min(quantization_mse(w, g) for g in uniform_grids(w, 2 ** bits).values())
            assert quantization_mse(w, c) <= best_uniform * (1 + 1e-6), (dist, bits)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_lloyd_max_is_the_specified_procedure(bits):
    w = RNG.laplace(size=(40, 30)).astype(np.float32)
    ours, info = lloyd_max(w, bits, guard_uniform=False, return_info=True)
    np.testing.assert_allclose(ours, _reference_lloyd(w, bits), rtol=1e-6, atol=1e-7)
    assert info["converged"] and info["init"] == "quantile"
    k = 2 ** bits
    init = np.quantile(w.astype(np.float64), (np.arange(1, k + 1) - 0.5) / k)
    assert info["init_mse"] == pytest.approx(quantization_mse(w, init), rel=1e-12)
    assert info["mse"] <= info["init_mse"]
    # a centroid is the mean of its cell (a fixed point, to the stopping tolerance)
    cell = np.searchsorted((ours[:-1] + ours[1:]) / 2, w.ravel())
    for j in np.unique(cell):
        assert ours[j] == pytest.approx(w.ravel()[cell == j].mean(), abs=1e-3 * float(np.abs(w).max()))


def test_lloyd_max_empty_cells_keep_their_centroid():
    # 3 distinct values, 8 cells: the quantile initialisation repeats values and some cells stay empty
    w = np.array([-1.0] * 10 + [0.25] * 3 + [2.0] * 7, np.float32)
    c, info = lloyd_max(w, 3, return_info=True)
    np.testing.assert_array_equal(c, _reference_lloyd(w, 3))
    assert set(np.unique(c)) == {-1.0, 0.25, 2.0} and info["mse"] == 0.0


def test_lloyd_max_guard_only_when_needed():
    w = RNG.standard_normal(5000)
    bare, info_bare = lloyd_max(w, 6, guard_uniform=False, return_info=True)
    guarded, info = lloyd_max(w, 6, return_info=True)
    best_uniform = min(quantization_mse(w, g) for g in uniform_grids(w, 64).values())
    assert info_bare["mse"] > best_uniform  # the local-minimum case the guard exists for
    assert info["init"] != "quantile" and info["mse"] <= best_uniform * (1 + 1e-6)
    w2 = RNG.standard_normal(5000)
    _, info2 = lloyd_max(w2, 3, return_info=True)
    assert info2["init"] == "quantile"


def test_lloyd_max_int8_snap():
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    for bits in (3, 8):
        c = lloyd_max(w, bits, snap_int8=True)
        s8 = np.abs(w).max() / 127
        n = c.astype(np.float64) / s8
        np.testing.assert_allclose(n, np.round(n), atol=1e-3)
        assert np.abs(np.round(n)).max() <= 127 and len(c) == 2 ** bits


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, True, "4", None])
def test_lloyd_max_rejects_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        lloyd_max(np.ones(10), bad)


def test_lloyd_max_rejects_bad_weights():
    with pytest.raises(ValueError, match="empty"):
        lloyd_max(np.zeros(0), 2)
    with pytest.raises(ValueError, match="NaN"):
        lloyd_max(np.array([1.0, np.nan]), 2)


# -- the quantizer ----------------------------------------------------------------------------------------------
def _codebook(bits=3, seed=0):
    return lloyd_max(np.random.default_rng(seed).standard_normal(2000), bits)


def test_quantizer_registry_and_repr_round_trip_exactly():
    c = _codebook(4)
    q = LloydMaxQuantizer(bits=4, centroids=tuple(c))
    assert qz.get(repr(q)) == q and qz.deserialize(qz.serialize(q)) == q
    assert qz.get(repr(q)).centroids == tuple(float(v) for v in c)
    np.testing.assert_array_equal(qz.get(repr(q)).codebook, c)
    assert q.num_levels == 16 and "lloyd_max" in qz.registered()
    # JSON turns the tuple into a list: still equal
    assert qz.get({"class_name": "lloyd_max", "config": {"bits": 4, "centroids": list(c)}}) == q


@pytest.mark.parametrize("spec, match", [
    ("lloyd_max(bits=2)", "centroids are required"),
    ("lloyd_max(bits=2, centroids=(0.0, 1.0, 2.0))", "exactly 4 centroids"),
    ("lloyd_max(bits=1, centroids=(1.0, 0.0))", "ascending"),
    ("lloyd_max(bits=9, centroids=(0.0, 1.0))", "bits"),
    ("lloyd_max(bits=0, centroids=(0.0,))", "bits"),
    ("lloyd_max(bits=1, centroids=(0.0, 'a'))", "not a sequence of numbers"),
    ("lloyd_max(bits=1, centroids=(0.0, float('inf')))", "literal"),
])
def test_quantizer_rejects_bad_config(spec, match):
    with pytest.raises(ValueError, match=match):
        qz.get(spec)


def test_quantizer_forward_is_nearest_centroid_with_ste():
    c = _codebook(3)
    q = LloydMaxQuantizer(bits=3, centroids=tuple(c))
    w = tf.constant(RNG.standard_normal((50, 20)).astype(np.float32) * 1.5)
    with tf.GradientTape() as tape:
        tape.watch(w)
        out = q.fake_quant(w)
        loss = tf.reduce_sum(out * tf.range(1000, dtype=tf.float32)[:, None][:50] / 1000)
    grad = tape.gradient(loss, w).numpy()
    expected = c[np.argmin(np.abs(w.numpy()[..., None] - c), axis=-1)]
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_allclose(grad, np.broadcast_to(np.arange(50, dtype=np.float32)[:, None] / 1000, (50, 20)),
                               rtol=1e-6)
    codes = q.codes(w.numpy())
    assert isinstance(codes, CodebookCodes) and codes.indices.dtype == np.uint8 and codes.indices.max() < 8
    np.testing.assert_array_equal(codes.dequantize(), out.numpy())
    assert codes.num_values <= 8


# -- MRACos -----------------------------------------------------------------------------------------------------
def _mracos_reference(w, c):
    c = np.unique(np.asarray(c, np.float64))
    w = np.asarray(w, np.float64)
    out = np.empty_like(w)
    for i, v in enumerate(w.ravel()):
        if v < c[0]:
            out.flat[i] = np.pi * (c[0] - v) / (c[1] - c[0])
        elif v > c[-1]:
            out.flat[i] = np.pi * (v - c[-1]) / (c[-1] - c[-2])
        else:
            k = min(np.searchsorted(c, v, side="right") - 1, len(c) - 2)
            m, d = (c[k] + c[k + 1]) / 2, c[k + 1] - c[k]
            out.flat[i] = abs(np.cos(np.pi * (v - m) / d))
    return out


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_mracos_zero_at_centroids_one_at_midpoints(bits):
    c = _codebook(bits, seed=bits)
    r_c = mracos(tf.constant(c), c).numpy()
    assert np.all(r_c == 0.0)  # exactly
    mids = (c[:-1] + c[1:]) / 2
    np.testing.assert_allclose(mracos(tf.constant(mids), c).numpy(), 1.0, atol=1e-6)


def test_mracos_matches_formula_is_continuous_and_grows_linearly_outside():
    c = _codebook(3, seed=3)
    lo, hi = c[0] - 1.0, c[-1] + 1.0
    w = np.linspace(lo, hi, 20001).astype(np.float32)
    r = mracos(tf.constant(w), c).numpy()
    np.testing.assert_allclose(r, _mracos_reference(w, c), atol=2e-5)
    step = w[1] - w[0]
    slope = np.pi / np.diff(c).min()
    assert np.max(np.abs(np.diff(r))) <= slope * step * 1.01  # Lipschitz: no jumps anywhere, edges included
    below, above = w < c[0], w > c[-1]
    np.testing.assert_allclose(r[below], np.pi * (c[0] - w[below]) / (c[1] - c[0]), rtol=1e-5)
    np.testing.assert_allclose(r[above], np.pi * (w[above] - c[-1]) / (c[-1] - c[-2]), rtol=1e-5)
    assert np.all(r[~below & ~above] <= 1.0 + 1e-6) and np.all(r >= 0)


def test_mracos_repeated_centroids_and_gradient():
    c = np.array([-1.0, 0.0, 0.0, 0.5], np.float32)
    assert np.all(mracos(tf.constant(c), c).numpy() == 0.0)
    w = tf.Variable([-2.0, -0.25, 0.3, 1.0])
    with tf.GradientTape() as tape:
        r = tf.reduce_sum(mracos(w, c))
    g = tape.gradient(r, w).numpy()
    assert np.all(np.isfinite(g))
    assert g[0] < 0 and g[3] > 0  # outside: pulled back in with the edge slope
    np.testing.assert_allclose([g[0], g[3]], [-np.pi / 1.0, np.pi / 0.5], rtol=1e-6)


# -- the compressor, fit_centroids and training --------------------------------------------------------------------
CFG = KWSModelConfig(window_frames=8, n_mels=5, pool=2, hidden=(16, 12), dropout=0.0)


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 5)).astype(np.float32)
    return x, (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0.3).astype(np.int32)


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(0)
    model = build_kws_model(CFG, 3)
    model.compile(keras.optimizers.Adam(0.01), LOSS, run_eagerly=True)  # eager: no trace to pay for
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


def test_fit_centroids_errors_before_a_float_model_exists(float_model):
    keras.utils.set_random_seed(0)
    untrained = build_kws_model(CFG, 3)
    with pytest.raises(ValueError, match="centroids requested before a float model exists"):
        aq.fit_centroids(untrained, 4)
    untrained.compile("adam", LOSS)
    with pytest.raises(ValueError, match="centroids requested before a float model exists.*not been trained"):
        aq.fit_centroids(untrained, 4)
    assert "layers" in aq.fit_centroids(untrained, 4, trained=True)  # weights loaded from a checkpoint

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = QuantDense(3)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match="centroids requested before a float model exists.*not built"):
        aq.fit_centroids(Sub(), 4)
    inp = keras.Input((4,))
    no_kernels = keras.Model(inp, QuantActivation("relu")(inp))
    with pytest.raises(ValueError, match="centroids requested before a float model exists.*no built quantized"):
        aq.fit_centroids(no_kernels, 4, trained=True)
    with pytest.raises(ValueError, match="centroids requested before a float model exists"):
        aq.fit_centroids("model.keras", 4)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="bits"):
            aq.fit_centroids(float_model, bad)
        with pytest.raises(ValueError, match="bits"):
            aq.fit_centroids(float_model, {"dense_in": bad, "*": 4})
    with pytest.raises(ValueError, match="pattern 'conv_\\*' matches no layer"):
        aq.fit_centroids(float_model, {"conv_*": 4})


def test_fit_centroids_recipe_per_layer(float_model):
    base = {"bias": "linear(bits=8)", "layers": {"dense_*": {"kernel": "tanh(bits=2)"}}}
    recipe = aq.fit_centroids(float_model, {"*": 5, "dense_in": 2}, base_recipe=base)
    assert base["layers"] == {"dense_*": {"kernel": "tanh(bits=2)"}}  # not modified
    assert recipe["bias"] == "linear(bits=8)"
    from kws_quant.models.recipes import get_recipe, spec_for
    get_recipe(recipe)
    for name, bits in (("dense_in", 2), ("dense_1", 5), ("dense_out", 5)):
        q = qz.get(spec_for(recipe, name, "kernel"))  # the fitted spec wins over the base pattern
        assert isinstance(q, LloydMaxQuantizer) and q.bits == bits
        w = float_model.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(q.codebook, lloyd_max(w, bits))


def test_train_with_mracos_and_compressor_then_save_load(float_model, tmp_path):
    x, y = _data()
    recipe = aq.fit_centroids(float_model, {"dense_in": 2, "*": 3})
    qat = build_kws_model(CFG, 3, recipe=recipe)
    transfer_weights(float_model, qat)
    # the regularizer reaches the loss through the layers: λ·mean R(W) per tensor
    aq.set_mracos_lambda(qat, 0.5)
    qat(x[:8], training=True)
    expected = sum(0.5 * np.mean(mracos(l.kernel, q.centroids).numpy()) for l, _, q in aq.lloyd_max_roles(qat))
    assert float(sum(qat.losses)) == pytest.approx(expected, rel=1e-5)
    aq.set_mracos_lambda(qat, 0.0)

    qat.compile(keras.optimizers.Adam(0.003), LOSS)
    warm = aq.MRACosWarmup(0.2, warmup_steps=4)
    comp = aq.HardCompressor(every=3)
    hist = qat.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[warm, comp])  # 8 steps
    assert all(np.isfinite(hist.history["loss"]))
    assert comp.compressed_at == [3, 6, 8]
    assert [warm.value_at(s) for s in (0, 2, 4, 9)] == [0.0, 0.1, 0.2, 0.2]
    for layer, role, q in aq.lloyd_max_roles(qat):
        assert float(layer.quantizer_state(role)["lam"].numpy()) == pytest.approx(0.2)
        values = np.unique(layer.kernel.numpy())
        assert len(values) <= 2 ** q.bits and set(values) <= set(q.codebook)
        codes = layer.quantized_weights()["kernel"]
        np.testing.assert_array_equal(codes.dequantize(), layer.kernel.numpy())

    path = tmp_path / "s8bqat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    for name in ("dense_in", "dense_1", "dense_out"):
        assert loaded.get_layer(name).quantizers["kernel"] == qat.get_layer(name).quantizers["kernel"]
    assert float(loaded.get_layer("dense_in").quantizer_state("kernel")["lam"].numpy()) == pytest.approx(0.2)


def test_compressor_on_a_converted_functional_model(float_model):
    """with_quantizers re-quantizes an existing model; the compressor leaves ≤ 2^b values per tensor."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 3))
    h = QuantConv1D(4, 3, name="conv")(inp)
    out = QuantDense(2, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    model.fit(np.ones((4, 10, 3), np.float32), np.zeros((4, 2), np.float32), verbose=0)
    recipe = aq.fit_centroids(model, {"conv": 1, "head": 2})
    qmodel = aq.with_quantizers(model, recipe["layers"])
    assert qmodel.get_layer("conv").quantizers["kernel"].bits == 1
    np.testing.assert_array_equal(qmodel.get_layer("head").kernel.numpy(), model.get_layer("head").kernel.numpy())
    assert aq.compress_to_centroids(qmodel) == 2
    assert len(np.unique(qmodel.get_layer("conv").kernel.numpy())) <= 2
    assert len(np.unique(qmodel.get_layer("head").kernel.numpy())) <= 4
    with pytest.raises(ValueError, match="matches no layer"):
        aq.with_quantizers(model, {"dense*": {"kernel": "tanh(bits=2)"}})
    with pytest.raises(ValueError, match="has no role"):
        aq.with_quantizers(model, {"conv": {"gain": "linear(bits=8)"}})


@pytest.mark.parametrize("kwargs, match", [({"lam": -1.0}, "lam"), ({"lam": 1.0, "warmup_steps": -2}, "warmup"),
                                           ({"every": 0}, "every")])
def test_callbacks_reject_bad_arguments(kwargs, match):
    cls = aq.HardCompressor if "every" in kwargs else aq.MRACosWarmup
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
