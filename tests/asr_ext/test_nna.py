"""NNA operator emulation (METHODS §8): bit-exact int8 dense vs LiteRT, TFLite fixed-point primitives against a NumPy
reference, LUT sigmoid/tanh, STE gradients, LSTM emulation, conversion, fit and save/load, bad input."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_ext.models import QuantLSTM
from asr_ext.quant import NNADense, NNALSTM, nna, to_nna
from kws_quant.export.tflite import make_interpreter, read_linear_ops, to_tflite
from kws_quant.layers import QuantDense

RNG = np.random.default_rng(7)
I32_MIN, I32_MAX = -(2 ** 31), 2 ** 31 - 1


# -- NumPy/Python-int references, written from TFLite's C++ (quantization_util.cc, common.h, gemmlowp) ---------------
def ref_quantize_multiplier(real, single=False):
    if real == 0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(q * 2 ** 31 + 0.5))  # TfLiteRound of a positive value
    if q_fixed == 2 ** 31:
        q_fixed, shift = q_fixed // 2, shift + 1
    if shift < -31:
        q_fixed, shift = 0, 0
    if single and shift > 30:
        q_fixed, shift = I32_MAX, 30
    return q_fixed, shift


def ref_srdhm(a, b):
    if a == b == I32_MIN:
        return I32_MAX
    v = a * b + ((1 << 30) if a * b >= 0 else 1 - (1 << 30))
    return abs(v) // 2 ** 31 * (1 if v >= 0 else -1)  # C++ division truncates toward zero


def ref_rdbp(x, e):
    mask = (1 << e) - 1
    return (x >> e) + int((x & mask) > (mask >> 1) + int(x < 0))


def ref_mbqm(x, m, shift, single=False):
    if single:
        return (x * m + (1 << (30 - shift))) >> (31 - shift)
    x = ((x * (1 << max(shift, 0)) + 2 ** 31) % 2 ** 32) - 2 ** 31  # int32 multiply wraps
    return ref_rdbp(ref_srdhm(x, m), max(-shift, 0))


def test_quantize_multiplier_matches_tflite_reference():
    reals = np.concatenate([RNG.uniform(1e-7, 3.0, 300), 2.0 ** np.arange(-34, 34),
                            [1 - 1e-12, 0.5 - 1e-17, 2.0 ** -31 * 0.9, 0.0, 3e-10, 1.5 * 2 ** 31]])
    for single in (False, True):
        m, s = nna.quantize_multiplier(tf.constant(reals, tf.float64), "single" if single else "double")
        ref = np.array([ref_quantize_multiplier(float(r), single) for r in reals])
        np.testing.assert_array_equal(m.numpy(), ref[:, 0])
        np.testing.assert_array_equal(s.numpy(), ref[:, 1])
    assert tuple(v.numpy()[0] for v in nna.quantize_multiplier(tf.constant([1 - 1e-12], tf.float64))) == (2 ** 30, 1)


def test_multiply_by_quantized_multiplier_matches_numpy_reference_on_edge_cases():
    edge_x = [0, 1, -1, 3, -3, 5, -5, 7, -7, I32_MAX, I32_MIN, 2 ** 30, -(2 ** 30), 12345, -12345]
    x = np.concatenate([RNG.integers(I32_MIN, I32_MAX, 2000, endpoint=True), np.repeat(edge_x, 6)])
    m = np.concatenate([RNG.integers(2 ** 30, 2 ** 31, 2000), np.tile([2 ** 30, I32_MAX, 2 ** 30 + 1], 30)])
    # right shifts up to 31 (large), 0, and left shifts (int32 wrap-around in the double-rounding kernel)
    shift = np.concatenate([RNG.integers(-31, 4, 2000), np.tile([-1, 0, -31, -30, 2], 18)])
    for rounding in ("double", "single"):
        single = rounding == "single"
        s = np.minimum(shift, 30) if single else shift
        got = nna.multiply_by_quantized_multiplier(tf.constant(x), tf.constant(m), tf.constant(s), rounding).numpy()
        ref = [ref_mbqm(int(a), int(b), int(c), single) for a, b, c in zip(x, m, s)]
        np.testing.assert_array_equal(got, ref, err_msg=rounding)
    # ties: 5·0.5 = 2.5 → 3 then /2 → 2 (double rounding) vs 1.25 → 1 (single); negatives; SRDHM saturation
    half = tf.constant(2 ** 30, tf.int64)
    assert [int(nna.multiply_by_quantized_multiplier(v, half, -1).numpy()) for v in (5, -5, 3, -3)] == [2, -1, 1, -1]
    assert [int(nna.multiply_by_quantized_multiplier(v, half, -1, "single").numpy()) for v in (5, -5, 3)] == [1, -1, 1]
    assert int(nna.saturating_rounding_doubling_high_mul(I32_MIN, I32_MIN).numpy()) == I32_MAX
    assert [int(nna.rounding_divide_by_pot(v, 1).numpy()) for v in (3, -3, 5, -5, 4)] == [2, -2, 3, -3, 2]


# -- dense: bit-exact against LiteRT -------------------------------------------------------------------------------
def _calibrated_dense(activation, per_channel, rounding):
    keras.utils.set_random_seed(1)
    inp = keras.Input((24,))
    layer = NNADense(10, activation=activation, per_channel=per_channel, rounding=rounding, name="fc")
    model = keras.Model(inp, layer(inp))
    layer.bias.assign(RNG.normal(0, 0.3, 10).astype(np.float32))
    x = (RNG.standard_normal((64, 24)) * 1.3 + 0.2).astype(np.float32)
    for _ in range(3):  # moving-average ranges of a narrow input distribution: full-range int8 inputs saturate
        model(x, training=True)
    return model, layer, x


@pytest.mark.parametrize("activation, per_channel, rounding, kernels", [
    ("relu", True, "double", dict(xnnpack=False)),  # LiteRT's optimized builtin per-channel kernel
    (None, True, "single", dict(reference=True)),  # LiteRT's reference kernels (built with single rounding)
    ("relu6", False, "single", dict(reference=True)),
])
@pytest.mark.litert_bitexact
def test_dense_is_bit_exact_with_litert(tmp_path, activation, per_channel, rounding, kernels):
    model, layer, x = _calibrated_dense(activation, per_channel, rounding)
    q = RNG.integers(-128, 128, (300, 24)).astype(np.int8)
    q[0], q[1], q[2, ::2], q[2, 1::2] = -128, 127, 127, -128
    path = to_tflite(model, tmp_path / "fc.tflite", x, batch_size=len(q))
    interp = make_interpreter(path, **kernels)
    interp.set_tensor(interp.get_input_details()[0]["index"], q)
    interp.invoke()
    litert = interp.get_tensor(interp.get_output_details()[0]["index"])
    emulated = layer.integer_forward(q).numpy()
    np.testing.assert_array_equal(emulated, litert)
    p = layer.integer_params()
    assert np.sum((emulated == p["activation_max"]) | (emulated == p["activation_min"])) > 100  # saturating inputs
    # the exported op carries exactly the emulation's integers and grids
    op = read_linear_ops(path)[0]
    np.testing.assert_array_equal(op["weights"], p["kernel"].T)
    np.testing.assert_array_equal(op["bias"], p["bias"])
    assert op["input_scale"][0] == p["input_scale"] and op["output_scale"][0] == p["output_scale"]
    assert op["input_zero_point"][0] == p["input_zero_point"] and op["output_zero_point"][0] == p["output_zero_point"]
    assert op["fused_activation"] == {"relu": "RELU", "relu6": "RELU6"}.get(activation, "NONE")
    # the Keras layer on the dequantized inputs returns exactly the dequantized int8 outputs
    x_deq = (q - p["input_zero_point"]).astype(np.float32) * p["input_scale"]
    y_deq = (litert - p["output_zero_point"]).astype(np.float32) * p["output_scale"]
    np.testing.assert_array_equal(model(x_deq).numpy(), y_deq)


def test_emulation_is_identical_in_eager_graph_and_xla():
    """Scales, multipliers and codes do not depend on the execution mode (graph mode rewrites a division by a constant,
    which the quantizers' scales avoid), so training and inference emulate the exported integers exactly."""
    _, dense, x = _calibrated_dense("relu6", True, "double")
    lstm = NNALSTM(6)
    seq = tf.constant(RNG.standard_normal((2, 5, 4)).astype(np.float32))
    lstm(seq, training=True)
    for layer, v, modes in ((dense, tf.constant(x), (False, True)), (lstm, seq, (False,))):  # (XLA-compiling the
        eager = layer(v).numpy()  # LSTM's loop takes ~10 s; its grids are the dense layer's code)
        for jit in modes:
            np.testing.assert_array_equal(tf.function(layer, jit_compile=jit)(v).numpy(), eager)


# -- lookup tables ---------------------------------------------------------------------------------------------------
@pytest.mark.litert_bitexact
@pytest.mark.parametrize("lo, hi", [(-8.0, 7.9375), (-4.0, 3.96875), (-5.3, 7.1)])
def test_lut_matches_litert_logistic_and_tanh(lo, hi):
    @tf.function(input_signature=[tf.TensorSpec([256], tf.float32)])
    def f(x):
        x = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)
        return tf.sigmoid(x), tf.tanh(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    data = converter.convert()
    codes = np.arange(-128, 128)
    for kernels in (dict(xnnpack=False), dict(reference=True)):
        interp = make_interpreter(data, **kernels)
        inp = interp.get_input_details()[0]
        s_in, z_in = inp["quantization"]
        interp.set_tensor(inp["index"], codes.astype(np.int8))
        interp.invoke()
        outputs = interp.get_output_details()
        assert sorted(o["quantization"] for o in outputs) == sorted(nna.LUT_OUTPUT.values())
        for out in outputs:
            kind = "sigmoid" if out["quantization"] == nna.LUT_OUTPUT["sigmoid"] else "tanh"
            table = nna.lut_table(kind, s_in, z_in)
            np.testing.assert_array_equal(table, interp.get_tensor(out["index"]), err_msg=f"{kind} {kernels}")
            s_out, z_out = nna.LUT_OUTPUT[kind]
            exact = {"sigmoid": tf.sigmoid, "tanh": tf.tanh}[kind](s_in * (codes - z_in)).numpy()
            assert np.abs((table - z_out) * s_out - exact).max() <= s_out  # within one int8 output step
    if (lo, hi) == (-8.0, 7.9375):  # the NNALSTM's gate tables are these ops' tables
        np.testing.assert_array_equal(nna.lut_table("sigmoid", s_in, z_in), nna._SIGMOID_LUT)
    if (lo, hi) == (-4.0, 3.96875):
        np.testing.assert_array_equal(nna.lut_table("tanh", s_in, z_in), nna._TANH_LUT)


# -- gradients -------------------------------------------------------------------------------------------------------
def _grads(layer, fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(y * tf.linspace(-1.0, 1.0, y.shape[-1]))
    return tape.gradient(loss, [x, *layer.trainable_variables])


def test_ste_gradients_are_those_of_the_fake_quant_path():
    _, dense, x = _calibrated_dense("relu", True, "double")
    x = tf.constant(x)
    got = _grads(dense, dense, x)
    ref = _grads(dense, lambda v: QuantDense.call(dense, v), x)
    assert len(got) == 3 and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in got)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g.numpy(), r.numpy())

    lstm = NNALSTM(6)
    seq = tf.constant(RNG.standard_normal((3, 5, 4)).astype(np.float32))
    lstm(seq, training=True)
    got = _grads(lstm, lstm, seq)
    ref = _grads(lstm, lambda v: QuantLSTM.call(lstm, v), seq)
    assert len(got) == 4 and all(np.isfinite(g.numpy()).all() and float(tf.reduce_max(tf.abs(g))) > 0 for g in got)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-6, atol=1e-7)
    dense.qat_stage.assign(0)  # stage 0: the float layer
    np.testing.assert_allclose(dense(x).numpy(), np.maximum(x.numpy() @ dense.kernel.numpy() + dense.bias.numpy(), 0),
                               rtol=1e-5, atol=1e-5)


# -- LSTM ------------------------------------------------------------------------------------------------------------
def test_lstm_emulation_is_on_its_grids_tracks_float_and_steps_alike():
    keras.utils.set_random_seed(3)
    lstm = NNALSTM(8, return_state=True)
    x = tf.constant(RNG.standard_normal((2, 7, 5)).astype(np.float32))
    lstm(x, training=True)  # input range
    seq, h, c = (v.numpy() for v in lstm(x))
    np.testing.assert_array_equal(seq * 128, np.round(seq * 128))  # h on the 2^-7 grid
    np.testing.assert_array_equal(c * 2048, np.round(c * 2048))  # c on the 2^-11 grid
    np.testing.assert_array_equal(seq[:, -1], h)
    ref = QuantLSTM.call(lstm, x)[0].numpy()  # float LSTM on the fake-quantized input and weights
    assert np.abs(seq - ref).max() < 0.06 and np.abs(seq - ref).mean() < 0.01
    state = (tf.zeros((2, 8)), tf.zeros((2, 8)))
    for t in range(x.shape[1]):  # decoding one step at a time gives the same integers
        y, state = lstm.step(x[:, t], state)
        np.testing.assert_array_equal(y.numpy(), seq[:, t])
    np.testing.assert_array_equal(state[1].numpy(), c)


# -- conversion, fit, save/load --------------------------------------------------------------------------------------
def _float_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4))
    x = QuantLSTM(8, return_sequences=False, name="lstm")(inp)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inp, QuantDense(3, name="logits")(x))


def test_to_nna_fits_and_round_trips(tmp_path):
    x = RNG.standard_normal((128, 6, 4)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0.2).astype(np.int32)
    base = _float_model()
    model = to_nna(base, {"*": True, "logits": False})
    assert [type(model.get_layer(n)) for n in ("lstm", "hidden", "logits")] == [NNALSTM, NNADense, QuantDense]
    np.testing.assert_array_equal(model.get_layer("lstm").kernel.numpy(), base.get_layer("lstm").kernel.numpy())
    np.testing.assert_array_equal(model.get_layer("hidden").kernel.numpy(), base.get_layer("hidden").kernel.numpy())
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history["loss"]
    assert hist[-1] < 0.9 * hist[0]
    assert float(model.get_layer("hidden").quantizer_state("output")["seen"].numpy()) == 16  # ranges learned in fit
    path = tmp_path / "nna.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_array_equal(loaded(x[:16]).numpy(), model(x[:16]).numpy())
    for name in ("lstm", "hidden"):
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()


@pytest.mark.parametrize("make, match", [
    (lambda: NNADense(3, bits=4), "bits=4 is not allowed"),
    (lambda: NNALSTM(3, bits=16), "bits=16 is not allowed"),
    (lambda: NNADense(3, activation="tanh"), "activation 'tanh'"),
    (lambda: NNADense(3, rounding="up"), "rounding='up'"),
    (lambda: to_nna(_float_model(), "conv*"), "pattern 'conv\\*' matches no layer"),
    (lambda: to_nna(_float_model(), {"*": 4}), "expected True or False"),
    (lambda: to_nna(_float_model(), "logits", ema_decay=1.5), "ema_decay"),
    (lambda: nna.lut_table("relu", 0.1, 0), "kind='relu'"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
