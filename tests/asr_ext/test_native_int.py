"""Native integer QAT (METHODS §7): exact int32 products, STE gradients, mixed precision, saving."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import asr_ext.quant as aq
from asr_ext.quant import NativeIntConv1D, NativeIntDense, to_native_int
from kws_quant import qat
from kws_quant.layers import QuantConv1D, QuantDense

RNG = np.random.default_rng(3)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- integer-only NumPy references ----------------------------------------------------------------------------------
def _np_codes(x, w, b_w, b_a):
    """Symmetric codes as METHODS §7 (float32 scale arithmetic, round half to even); returns int64 codes + scales."""
    qa, qw = 2 ** (b_a - 1) - 1, 2 ** (b_w - 1) - 1
    s_x = np.float32(max(np.float32(np.abs(x).max()), np.float32(1e-8)) / np.float32(qa))
    amax_w = np.maximum(np.abs(w).reshape(-1, w.shape[-1]).max(0), np.float32(1e-8)).astype(np.float32)
    s_w = (amax_w / np.float32(qw)).astype(np.float32)
    q_x = np.clip(np.round(x / s_x), -qa, qa).astype(np.int64)
    q_w = np.clip(np.round(w / s_w), -qw, qw).astype(np.int64)
    return q_x, q_w, s_x, s_w


def _np_conv1d(q_x, q_w, stride, dilation, padding):
    """Integer 1-D convolution by explicit loops over output frames and taps (int64)."""
    b, t, _ = q_x.shape
    k, _, f = q_w.shape
    span = dilation * (k - 1) + 1
    if padding == "causal":
        left, right = span - 1, 0
    elif padding == "same":
        out = -(-t // stride)
        total = max((out - 1) * stride + span - t, 0)
        left, right = total // 2, total - total // 2
    else:
        left = right = 0
    xp = np.pad(q_x, [(0, 0), (left, right), (0, 0)])
    t_out = (xp.shape[1] - span) // stride + 1
    acc = np.zeros((b, t_out, f), np.int64)
    for i in range(t_out):
        for j in range(k):
            acc[:, i, :] += xp[:, i * stride + j * dilation, :] @ q_w[j]
    return acc


# -- dense --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b_w, b_a", [(2, 8), (4, 8), (8, 8), (4, 4), (3, 5)])
def test_dense_integer_product_is_exact(b_w, b_a):
    layer = NativeIntDense(7, weight_bits=b_w, act_bits=b_a, use_bias=False)
    x = (RNG.standard_normal((5, 3, 40)) * 2).astype(np.float32)  # rank 3: [..., in]
    layer.build(x.shape)
    layer.kernel.assign(RNG.standard_normal((40, 7)).astype(np.float32) * np.linspace(0.1, 2, 7, dtype=np.float32))
    q_x, q_w, s_x, s_w = _np_codes(x, layer.kernel.numpy(), b_w, b_a)
    acc_ref = q_x @ q_w  # int64 NumPy reference
    got = layer.integer_accumulator(x)
    assert got["acc"].dtype == np.int32
    np.testing.assert_array_equal(got["q_x"], q_x)
    np.testing.assert_array_equal(got["q_w"], q_w)
    np.testing.assert_array_equal(got["acc"], acc_ref)  # exact, before the rescale
    assert got["s_x"] == s_x and np.array_equal(got["s_w"], s_w)
    y = layer(x).numpy()
    np.testing.assert_array_equal(y, acc_ref.astype(np.float32) * (s_x * s_w))  # same float ops → same bits
    # the exported kernel codes (linear quantizer, per channel) are the same integers
    codes = layer.quantized_weights()["kernel"]
    np.testing.assert_array_equal(codes.codes, q_w)
    np.testing.assert_allclose(codes.scale, s_w, rtol=1e-7)


def test_int32_is_exact_where_float32_accumulation_is_not():
    # fan-in 4096 at 8/8 bits: |acc| up to 66e6 > 2^24, beyond float32's exact integers
    layer = NativeIntDense(3, weight_bits=8, act_bits=8, use_bias=False)
    x = RNG.uniform(0.9, 1.0, (4, 4096)).astype(np.float32)
    layer.build(x.shape)
    layer.kernel.assign(RNG.uniform(0.9, 1.0, (4096, 3)).astype(np.float32))
    q_x, q_w, _, _ = _np_codes(x, layer.kernel.numpy(), 8, 8)
    acc_ref = q_x @ q_w
    assert acc_ref.max() > 2 ** 24
    np.testing.assert_array_equal(layer.integer_accumulator(x)["acc"], acc_ref)
    with pytest.raises(ValueError, match="overflow the int32 accumulator"):
        NativeIntDense(2, weight_bits=8, act_bits=8).build((None, 140_000))


def test_ste_gradients_are_those_of_the_dequantized_float_product():
    layer = NativeIntDense(4, weight_bits=4, act_bits=8, use_bias=False)
    x = tf.constant(RNG.standard_normal((6, 10)).astype(np.float32))
    layer.build(x.shape)
    g_out = tf.constant(RNG.standard_normal((6, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    gx, gw = tape.gradient(y, [x, layer.kernel], output_gradients=g_out)
    q_x, q_w, s_x, s_w = _np_codes(x.numpy(), layer.kernel.numpy(), 4, 8)
    x_hat, w_hat = q_x * s_x, q_w * s_w
    np.testing.assert_allclose(gx.numpy(), g_out.numpy() @ w_hat.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), x_hat.T @ g_out.numpy(), rtol=1e-5, atol=1e-6)


def test_ema_range_clips_and_masks_the_gradient():
    layer = NativeIntDense(2, weight_bits=4, act_bits=8, act_range="ema", ema_decay=0.5, use_bias=False)
    x_small = tf.constant(RNG.uniform(-1, 1, (8, 5)).astype(np.float32))
    layer.build(x_small.shape)
    layer(x_small, training=True)  # first batch sets the range to [-1, 1]-ish
    big = tf.constant(np.float32([[10.0, 0.5, -0.5, 0.1, -10.0]]))
    got = layer.integer_accumulator(big)
    assert got["q_x"][0, 0] == 127 and got["q_x"][0, 4] == -127  # clipped by the frozen range
    with tf.GradientTape() as tape:
        tape.watch(big)
        y = layer(big, training=False)
    g = tape.gradient(y, big).numpy()
    assert g[0, 0] == 0 and g[0, 4] == 0 and np.all(g[0, 1:4] != 0)
    before = layer.quantizer_state("input")["max"].numpy()
    layer(big, training=False)
    assert layer.quantizer_state("input")["max"].numpy() == before  # frozen at inference


def test_stage_zero_is_float():
    layer = NativeIntDense(3, weight_bits=2, act_bits=4, name="d")
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    y_native = layer(x).numpy()
    layer.qat_stage.assign(0)
    y_float = layer(x).numpy()
    np.testing.assert_allclose(y_float, x @ layer.kernel.numpy() + layer.bias.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(y_native, y_float)


# -- conv1d --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding, stride, dilation", [("valid", 1, 1), ("same", 2, 1), ("causal", 1, 2),
                                                       ("same", 1, 3), ("valid", 3, 1)])
def test_conv1d_integer_product_is_exact_and_matches_float_conv(padding, stride, dilation):
    k, cin, f = 3, 5, 4
    layer = NativeIntConv1D(f, k, strides=stride, dilation_rate=dilation, padding=padding, weight_bits=4,
                            act_bits=8, use_bias=False)
    x = RNG.standard_normal((2, 11, cin)).astype(np.float32)
    layer.build(x.shape)
    q_x, q_w, s_x, s_w = _np_codes(x, layer.kernel.numpy(), 4, 8)
    acc_ref = _np_conv1d(q_x, q_w, stride, dilation, padding)
    got = layer.integer_accumulator(x)
    np.testing.assert_array_equal(got["acc"], acc_ref)
    y = layer(x).numpy()
    np.testing.assert_array_equal(y, acc_ref.astype(np.float32) * (s_x * s_w))
    # same padding/stride semantics as the float QuantConv1D on the fake-quantized tensors
    ref = QuantConv1D(f, k, strides=stride, dilation_rate=dilation, padding=padding, use_bias=False)
    ref.build(x.shape)
    ref.kernel.assign((q_w * s_w).astype(np.float32))
    np.testing.assert_allclose(y, ref((q_x * s_x).astype(np.float32)).numpy(), rtol=1e-5, atol=1e-5)
    assert y.shape[1:] == tuple(layer.compute_output_shape(x.shape)[1:])


# -- bad input, mixed precision, fit and save/load ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [({"weight_bits": 1}, "weight_bits"), ({"weight_bits": 9}, "weight_bits"),
                                           ({"act_bits": 1}, "act_bits"), ({"act_bits": 16}, "act_bits"),
                                           ({"act_range": "minmax"}, "act_range"), ({"ema_decay": 1.5}, "ema_decay")])
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NativeIntDense(3, **kwargs)
    with pytest.raises(ValueError, match=match):
        NativeIntConv1D(3, 2, **kwargs)


def _float_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 4))
    x = QuantConv1D(6, 3, padding="causal", activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    x = QuantDense(8, activation="relu", name="dense_in", bias_quantizer="linear(bits=8)")(x)
    out = QuantDense(3, name="dense_out")(x)
    return keras.Model(inp, out)


def test_precision_map_errors():
    model = _float_model()
    with pytest.raises(ValueError, match="pattern 'lstm\\*' matches no layer"):
        to_native_int(model, {"lstm*": (4, 8)})
    with pytest.raises(ValueError, match="weight_bits"):
        to_native_int(model, {"dense_in": (1, 8), "*": (4, 8)})
    with pytest.raises(ValueError, match="act_bits"):
        to_native_int(model, {"*": (4, 9)})
    with pytest.raises(ValueError, match="expected \\(weight_bits, act_bits\\)"):
        to_native_int(model, {"*": 4})
    assert aq.resolve_precision({"dense_in": (8, 8), "*": (4, 8)}, model) == {
        "conv": (4, 8), "dense_in": (8, 8), "dense_out": (4, 8)}


def test_mixed_precision_model_fits_and_round_trips(reload_keras):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 10, 4)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0.3).astype(np.int32)
    model = to_native_int(_float_model(), {"dense_in": (8, 8), "*": (4, 6)}, act_range="ema")
    conv, dense_in, dense_out = (model.get_layer(n) for n in ("conv", "dense_in", "dense_out"))
    assert isinstance(conv, NativeIntConv1D) and isinstance(dense_in, NativeIntDense)
    assert (dense_in.weight_bits, dense_in.act_bits, conv.weight_bits, conv.act_bits) == (8, 8, 4, 6)
    assert dense_in.quantizers["bias"].bits == 8 and dense_out.activation.__name__ == "linear"  # kept
    model.compile(keras.optimizers.Adam(0.01), LOSS)
    cb = qat.TwoStageQAT(stage1_at=0, stage2_at=1, verbose=False)
    hist = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    assert all(np.isfinite(hist.history["loss"]))
    assert float(dense_in.quantizer_state("input")["seen"].numpy()) == 6  # EMA ranges updated in training
    # inside the trained model, the output before bias is still exactly the integer product
    got = dense_out.integer_accumulator(rng.standard_normal((3, 8)).astype(np.float32))
    np.testing.assert_array_equal(got["acc"], got["q_x"].astype(np.int64) @ got["q_w"].astype(np.int64))

    loaded = reload_keras(model, x, "native.keras")
    for name in ("conv", "dense_in", "dense_out"):
        a, b = loaded.get_layer(name), model.get_layer(name)
        assert type(a) is type(b) and a.get_config() == b.get_config()
