"""General Quantizer (METHODS §6): μ-law centroids, soft-to-hard assignment, annealing, bits maps, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import asr_ext.quant as aq
from asr_ext.quant import GeneralQuantizer, TemperatureAnnealing, gq_centroids, gq_recipe
from asr_ext.quant.bits_map import escape_pattern, resolve
from asr_ext.quant.general_quantizer import gq_centroids_np
from kws_quant import quantizers as qz
from kws_quant.layers import QuantConv1D, QuantDense

RNG = np.random.default_rng(11)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Holder(keras.layers.Layer):
    """A bare layer to hold a quantizer's state for unit tests."""


def _state(q, w, tau=None, hard=False):
    holder = Holder()
    holder.kernel = keras.Variable(w, name="kernel")
    st = q.build(holder, tuple(w.shape), "kernel")
    if tau is not None:
        st["tau"].assign(tau)
    st["hard"].assign(1.0 if hard else 0.0)
    return holder, st


# -- centroids --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("s, mu", [(1.0, 5.0), (0.37, 0.01), (2.5, 40.0)])
def test_centroids_sorted_symmetric_and_match_formula(bits, s, mu):
    c = gq_centroids(tf.constant(s), tf.constant(mu), bits).numpy()
    assert c.shape == (2 ** bits,)
    assert np.all(np.diff(c) > 0)  # strictly sorted
    np.testing.assert_array_equal(c, -c[::-1])  # exactly symmetric
    np.testing.assert_allclose(c, gq_centroids_np(s, mu, bits), rtol=2e-5, atol=1e-6 * s)
    assert c[-1] == pytest.approx(s, rel=1e-5)  # F⁻¹(±1) = ±1: the codebook spans [-s, s]
    if bits == 1:
        np.testing.assert_array_equal(c, np.float32([-s, s]))


def test_quantizer_state_initial_values_and_centroids_stay_sorted_after_updates():
    w = RNG.standard_normal((30, 8)).astype(np.float32)
    q = GeneralQuantizer(bits=3, mu_init=5.0, tau0=0.5)
    _, st = _state(q, w, tau=0.5)
    assert float(st["scale"].numpy()) == pytest.approx(np.abs(w).max())
    assert float(q.mu(st).numpy()) == pytest.approx(5.0, rel=1e-6)
    assert float(st["tau"].numpy()) == 0.5 and st["scale"].trainable and st["mu_param"].trainable
    assert not st["tau"].trainable and not st["hard"].trainable
    opt = keras.optimizers.SGD(10.0)
    for _ in range(5):  # large steps on s and μ: s stays > 0 (constraint), μ > 0 (softplus), order is kept
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(q.soft(tf.constant(w), st) ** 2) * 100.0
        opt.apply_gradients(zip(tape.gradient(loss, [st["scale"], st["mu_param"]]), [st["scale"], st["mu_param"]]))
        c = q.centroids(st).numpy()
        assert np.all(np.diff(c) > 0) and np.all(c == -c[::-1])
        assert float(st["scale"].numpy()) > 0 and float(q.mu(st).numpy()) > 0


# -- gradients, soft vs hard ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hard", [False, True])
def test_gradients_reach_scale_mu_and_weights(hard):
    w = tf.Variable(RNG.standard_normal((16, 6)).astype(np.float32))
    q = GeneralQuantizer(bits=4)
    _, st = _state(q, w.numpy(), tau=0.05, hard=hard)
    target = tf.constant(RNG.standard_normal((16, 6)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((q.fake_quant(w, st) - target) ** 2)
    gs, gmu, gw = tape.gradient(loss, [st["scale"], st["mu_param"], w])
    for g in (gs, gmu, gw):
        assert g is not None and np.all(np.isfinite(g.numpy()))
    assert abs(float(gs)) > 1e-6 and abs(float(gmu)) > 1e-6 and np.abs(gw.numpy()).max() > 1e-6
    if hard:  # straight-through: dL/dw = dL/dw_q
        np.testing.assert_allclose(gw.numpy(), 2 * (q.hard(w, st) - target).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
def test_soft_equals_hard_as_tau_goes_to_zero(bits):
    w = RNG.standard_normal((40, 10)).astype(np.float32)
    q = GeneralQuantizer(bits=bits)
    _, st = _state(q, w)
    hard = q.hard(tf.constant(w), st).numpy()
    c = q.centroids(st).numpy()
    np.testing.assert_array_equal(hard, c[np.argmin(np.abs(w[..., None] - c), axis=-1)])
    assert len(np.unique(hard)) <= 2 ** bits
    gaps = [float(np.abs(q.soft(tf.constant(w), st, tau=t).numpy() - hard).max()) for t in (1.0, 1e-2, 1e-4)]
    assert gaps[0] > gaps[1] > gaps[2] or gaps[2] == 0.0
    # tau -> 0: the soft weight picks the hard centroid (exact index); its value is a softmax-weighted sum, so equal
    # to the centroid only up to float32 rounding (a few ulps; one ulp was seen on AMD EPYC)
    ulps = 4 * np.spacing(np.float32(np.abs(c).max()))

    def assert_hard(values):
        np.testing.assert_array_equal(np.argmin(np.abs(values[..., None] - c), axis=-1),
                                      np.argmin(np.abs(w[..., None] - c), axis=-1))
        np.testing.assert_allclose(values, hard, rtol=0, atol=ulps)

    assert_hard(q.soft(tf.constant(w), st, tau=1e-9).numpy())
    # the forward follows the flag
    st["tau"].assign(1e-9)
    assert_hard(q.fake_quant(tf.constant(w), st).numpy())
    st["tau"].assign(1.0)
    assert not np.array_equal(q.fake_quant(tf.constant(w), st).numpy(), hard)
    st["hard"].assign(1.0)
    np.testing.assert_array_equal(q.fake_quant(tf.constant(w), st).numpy(), hard)
    codes = q.codes(w, st)
    assert codes.indices.dtype == np.uint8 and codes.bits == bits
    np.testing.assert_array_equal(codes.dequantize(), hard)


@pytest.mark.parametrize("spec, match", [("gq(bits=0)", "bits"), ("gq(bits=9)", "bits"), ("gq(bits=2.0)", "bits"),
                                         ("gq(bits=4, mu_init=0)", "mu_init"), ("gq(bits=4, tau0=-1.0)", "tau0"),
                                         ("gq(bits=4, temperature=1.0)", "unknown argument")])
def test_bad_config(spec, match):
    with pytest.raises(ValueError, match=match):
        qz.get(spec)


def test_registry_round_trip_and_stateless_use_is_rejected():
    q = qz.get("gq(bits=3, mu_init=2.0, tau0=0.5)")
    assert qz.get(repr(q)) == q and q.num_levels == 8
    with pytest.raises(ValueError, match="quantized layer"):
        q.fake_quant(tf.ones((3,)))


# -- bits map -----------------------------------------------------------------------------------------------------
def test_bits_map_resolution_and_errors():
    names = ["dense_in", "dense_1", "dense_2", "dense_out", "conv[1]"]
    assert resolve({"dense_in": 1, "*": 4}, names) == {n: 1 if n == "dense_in" else 4 for n in names}
    assert resolve({"*": 4, "dense_in": 1}, names) == resolve({"dense_in": 1, "*": 4}, names)  # order-free
    got = resolve({"*": 8, "dense_?": 2, "dense_*": 5, escape_pattern("conv[1]"): 3}, names)
    assert got == {"dense_in": 5, "dense_1": 2, "dense_2": 2, "dense_out": 5, "conv[1]": 3}
    assert resolve(4, names) == {n: 4 for n in names}
    assert resolve({"dense_o*": 2}, names) == {"dense_out": 2}
    with pytest.raises(ValueError, match="pattern 'lstm_\\*' matches no layer"):
        resolve({"lstm_*": 2, "*": 4}, names)
    with pytest.raises(ValueError, match="pattern 'conv\\[1\\]' matches no layer"):
        resolve({"conv[1]": 2}, names)  # an fnmatch class, not the literal name
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="bits"):
            gq_recipe({"dense_in": bad, "*": 4}, names)


# -- in a model: fit with annealing, bits map, save/load ---------------------------------------------------------------
def _model(specs=None, seed=0):
    specs = specs or {}
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 4))
    x = QuantConv1D(6, 3, padding="same", activation="relu", name="conv", kernel_quantizer=specs.get("conv"))(inp)
    x = keras.layers.Flatten()(x)
    x = QuantDense(8, activation="relu", name="dense_in", kernel_quantizer=specs.get("dense_in"))(x)
    out = QuantDense(3, name="dense_out", kernel_quantizer=specs.get("dense_out"))(x)
    return keras.Model(inp, out)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10, 4)).astype(np.float32)
    return x, (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0.3).astype(np.int32)


def test_fit_with_annealing_bits_map_and_save_load(reload_keras):
    x, y = _data()
    float_model = _model()
    recipe = gq_recipe({"dense_in": 1, "*": 4}, float_model, mu_init=4.0)
    qat = aq.with_quantizers(float_model, recipe["layers"])  # weights copied, GQ state created
    qat.get_layer("dense_in").kernel.assign(qat.get_layer("dense_in").kernel * 3.0)  # as if trained weights arrived
    bits = {l.name: q.bits for l, _, q, _ in aq.gq_states(qat)}
    assert bits == {"conv": 4, "dense_in": 1, "dense_out": 4}
    assert qat.get_layer("dense_in").quantizer_state("kernel")["mu_param"].trainable is False  # b=1: μ unused

    qat.compile(keras.optimizers.Adam(0.01), LOSS)
    anneal = TemperatureAnnealing(steps=4, tau_min=1e-4, tau0=1.0)
    s_before = {l.name: float(st["scale"].numpy()) for l, _, _, st in aq.gq_states(qat)}
    hist = qat.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[anneal])  # 6 steps
    assert all(np.isfinite(hist.history["loss"]))
    assert anneal.went_hard_at == 4
    assert [anneal.tau_at(s, 1.0) for s in (0, 2, 4, 10)] == pytest.approx([1.0, 1e-2, 1e-4, 1e-4])
    for layer, _, q, st in aq.gq_states(qat):
        assert float(st["tau"].numpy()) == pytest.approx(1e-4) and float(st["hard"].numpy()) == 1.0
        assert float(st["initialized"].numpy()) == 1.0
        w_q = layer.quantize_role("kernel", layer.kernel).numpy()
        assert len(np.unique(w_q)) <= 2 ** q.bits
        assert set(np.unique(w_q)) <= set(q.centroids(st).numpy())
    # s was re-initialised from the weights at the first training step (3× larger for dense_in)
    st_in = qat.get_layer("dense_in").quantizer_state("kernel")
    assert float(st_in["scale"].numpy()) > 2.0 * s_before["dense_in"]

    loaded = reload_keras(qat, x, "gq.keras")
    for name in ("conv", "dense_in", "dense_out"):
        a, b = loaded.get_layer(name), qat.get_layer(name)
        assert a.quantizers == b.quantizers
        for key in ("scale", "mu_param", "tau", "hard", "initialized"):
            assert float(a.quantizer_state("kernel")[key].numpy()) == float(b.quantizer_state("kernel")[key].numpy())


def test_hard_on_request_and_temperature_helpers():
    model = _model({"conv": "gq(bits=2)", "dense_in": "gq(bits=3)"})
    x, _ = _data(8)
    assert aq.set_gq_temperature(model, 1e-9) == 2
    soft = model(x).numpy()
    assert aq.set_gq_hard(model, True) == 2
    np.testing.assert_allclose(model(x).numpy(), soft, rtol=1e-6, atol=1e-6)
    assert aq.set_gq_hard(model, False) == 2
    with pytest.raises(ValueError, match="tau"):
        aq.set_gq_temperature(model, 0.0)
    with pytest.raises(ValueError, match="steps"):
        TemperatureAnnealing(steps=0)
    with pytest.raises(ValueError, match="tau_min"):
        TemperatureAnnealing(steps=3, tau_min=-1.0)
