"""Quantized layers and two-stage QAT in Keras workflows: fit, stage switches, saving, tf.function, distribution."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kws_quant
from kws_quant import qat
from kws_quant.layers import (QuantActivation, QuantBatchNormalization, QuantConv1D, QuantConv2D, QuantDense,
                              quant_layers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_model(seed=0):
    """Input quantizer → conv → BN → relu → dense(softmax): every role and layer kind."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 6))
    x = QuantActivation(quantizer="linear(bits=8)", name="in_q")(inp)
    x = QuantConv1D(8, 3, padding="causal", kernel_quantizer="tanh(bits=4)", bias_quantizer="linear(bits=8)",
                    name="conv")(x)
    x = QuantBatchNormalization(gain_quantizer="linear(bits=8, per_channel=True)",
                                offset_quantizer="linear(bits=8)", name="bn")(x)
    x = QuantActivation("relu", quantizer="linear(bits=8)", name="act")(x)
    x = keras.layers.Flatten()(x)
    out = QuantDense(3, activation="softmax", name="head",
                     kernel_quantizer="tanh(bits=5, mode='symmetric', per_channel=True, output_scale='max')",
                     bias_quantizer="linear(bits=8)")(x)
    return keras.Model(inp, out)


def toy_data(n=384, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12, 6)).astype(np.float32)
    y = (x[:, :6, 0].mean(1) > 0).astype(np.int32) + (x[:, 6:, 1].mean(1) > 0.2).astype(np.int32)
    return x, y


def test_fit_loss_falls_and_stage_switches_mid_fit():
    model = small_model()
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = toy_data()
    cb = qat.TwoStageQAT(stage1_at=1, stage2_at=3, verbose=False)
    hist = model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[cb])
    assert cb.history == [(0, 0), (1, 1), (3, 2)]
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]
    assert qat.get_stage(model) == 2
    assert model.evaluate(x, y, verbose=0)[1] > 0.6


def test_step_schedule_switches_inside_an_epoch():
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = toy_data(128)
    cb = qat.TwoStageQAT(stage1_at=2, stage2_at=5, unit="step", verbose=False)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])  # 8 steps
    assert cb.history == [(0, 0), (2, 1), (5, 2)]
    # resuming in a later fit continues from optimizer.iterations, already past both switches
    cb2 = qat.TwoStageQAT(stage1_at=2, stage2_at=5, unit="step", verbose=False)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb2])
    assert cb2.history == [(8, 2)]


def test_stages_change_what_is_quantized():
    model = small_model()
    x, _ = toy_data(64)
    model(x, training=True)  # initialise moving-average ranges
    conv = model.get_layer("conv")
    kernel = conv.kernel
    outs = {}
    for stage in (0, 1, 2):
        qat.set_stage(model, stage)
        assert qat.get_stage(model) == stage
        outs[stage] = model.predict(x, verbose=0)
        k = conv.quantize_role("kernel", kernel).numpy()
        assert (len(np.unique(k)) <= 16) == (stage >= 1)
        a = model.get_layer("act").quantize_role("output", tf.constant(x[:, :, :1] * 3)).numpy()
        assert (len(np.unique(a)) <= 256) == (stage == 2) or stage < 2 and len(np.unique(a)) > 256
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_stage_switch_does_not_retrace():
    traces = []

    class CountingDense(QuantDense):
        def call(self, inputs, training=None):
            traces.append(training)  # runs once per trace, not per step, inside tf.function
            return super().call(inputs, training)

    inp = keras.Input((6,))
    out = CountingDense(2, kernel_quantizer="tanh(bits=2)", input_quantizer="linear(bits=8)")(inp)
    model = keras.Model(inp, out)
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    y = np.zeros((64, 2), np.float32)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    before = len(traces)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0,
              callbacks=[qat.TwoStageQAT(stage1_at=1, stage2_at=2, verbose=False)])
    assert len(traces) == before  # three stages, no new trace


def test_checkpoint_restores_stage(tmp_path):
    model = small_model()
    x, y = toy_data(64)
    model(x, training=True)
    qat.set_stage(model, 1)
    model.save_weights(tmp_path / "w.weights.h5")
    fresh = small_model(seed=1)
    assert qat.get_stage(fresh) == 2
    fresh.load_weights(tmp_path / "w.weights.h5")
    assert qat.get_stage(fresh) == 1
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.subprocess
def test_save_load_in_fresh_process_gives_identical_predictions(tmp_path):
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = toy_data(128)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[qat.TwoStageQAT(0, 1, verbose=False)])
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    code = textwrap.dedent(f"""
        import numpy as np, keras, kws_quant
        m = keras.saving.load_model({path!r})
        np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_layer_configs_roundtrip_and_keep_quantizers():
    for layer in [QuantDense(4, kernel_quantizer="tanh(bits=3)", output_quantizer="linear(bits=6)"),
                  QuantConv2D(2, (3, 2), strides=2, padding="same", kernel_quantizer="tanh(bits=1)"),
                  QuantBatchNormalization(gain_quantizer="linear(bits=8)"),
                  QuantActivation("relu", quantizer="linear(bits=4, symmetric=False)")]:
        clone = type(layer).from_config(json.loads(json.dumps(layer.get_config())))
        assert clone.quantizers == layer.quantizers and clone.get_config() == layer.get_config()


def test_conv_shapes_match_keras():
    x = np.random.default_rng(0).standard_normal((2, 9, 7, 3)).astype(np.float32)
    for kw in [dict(strides=1, padding="valid"), dict(strides=2, padding="same"), dict(dilation_rate=2)]:
        ours = QuantConv2D(4, 3, kernel_quantizer=None, **kw)
        ref = keras.layers.Conv2D(4, 3, **kw)
        ref.build(x.shape)
        ours.build(x.shape)
        ours.kernel.assign(ref.kernel)
        np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)
        assert ours.compute_output_shape(x.shape) == ref.compute_output_shape(x.shape)
    x1 = x[:, :, 0, :]
    for pad in ["causal", "same", "valid"]:
        ours, ref = QuantConv1D(5, 3, strides=2, padding=pad), keras.layers.Conv1D(5, 3, strides=2, padding=pad)
        ours.build(x1.shape)
        ref.build(x1.shape)
        ours.kernel.assign(ref.kernel)
        np.testing.assert_allclose(ours(x1).numpy(), ref(x1).numpy(), rtol=1e-5, atol=1e-5)
        assert ours.compute_output_shape(x1.shape) == ref.compute_output_shape(x1.shape)


def test_float_batchnorm_matches_keras():
    x = (np.random.default_rng(0).standard_normal((64, 5)) * 3 + 1).astype(np.float32)
    ours, ref = QuantBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for _ in range(3):
        np.testing.assert_allclose(ours(x, training=True).numpy(), ref(x, training=True).numpy(), atol=1e-4)
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-5)


def test_batchnorm_quantizes_folded_affine():
    bn = QuantBatchNormalization(gain_quantizer="linear(bits=4, per_channel=True)", offset_quantizer="linear(bits=4)")
    x = (np.random.default_rng(0).standard_normal((32, 3)) * [1, 2, 3]).astype(np.float32)
    bn(x, training=True)
    codes = bn.quantized_weights()
    assert set(codes) == {"gain", "offset"} and len(np.unique(codes["offset"].codes)) <= 15
    gain, offset = bn.folded(bn.moving_mean, bn.moving_variance)
    expected = x * codes["gain"].dequantize() + codes["offset"].dequantize()
    np.testing.assert_allclose(bn(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(bn(x).numpy(), x * gain.numpy() + offset.numpy(), atol=1e-6)


def test_works_inside_tf_function_and_mixed_precision():
    model = small_model()
    x, _ = toy_data(16)
    eager = model(x, training=False).numpy()
    np.testing.assert_allclose(tf.function(lambda t: model(t, training=False))(x).numpy(), eager, atol=1e-6)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = QuantDense(4, kernel_quantizer="tanh(bits=4)", input_quantizer="linear(bits=8)")
        y = layer(tf.constant(x[:, 0, :]), training=True)
        assert y.dtype == tf.float16 and np.all(np.isfinite(y.numpy()))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_layer_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"QuantDense 'd', kernel_quantizer: tanh: bits=9 is not allowed"):
        QuantDense(3, kernel_quantizer="tanh(bits=9)", name="d")
    with pytest.raises(ValueError, match="padding='full' is not allowed"):
        QuantConv1D(3, 3, padding="full")
    with pytest.raises(ValueError, match="data_format='channels_first' is not supported"):
        QuantConv2D(3, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="stage=5 is not allowed"):
        qat.set_stage(small_model(), 5)
    with pytest.raises(ValueError, match="stage2_at=1 comes before stage1_at=2"):
        qat.TwoStageQAT(2, 1)


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, sys
    sys.path.insert(0, "tests/kws_quant")
    from test_layers import small_model, toy_data
    from kws_quant import qat
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = small_model()
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = toy_data(256)
    h = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[qat.TwoStageQAT(1, 2, verbose=False)])
    seen = float(model.get_layer("act").quantizer_state("output")["seen"].numpy())
    print("RESULT", h.history["loss"][0], h.history["loss"][-1], qat.get_stage(model), seen)
""")


@pytest.mark.subprocess
def test_mirrored_strategy_two_logical_cpus():
    out = subprocess.run([sys.executable, "-c", MIRRORED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][0].split()
    first, last, stage, seen = float(line[1]), float(line[2]), int(line[3]), float(line[4])
    assert last < first and stage == 2 and seen > 0


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (7, 1), (3, 4), (4, 2)])
def test_depthwise_conv1d_shifted_sum_equals_keras_depthwise_conv(padding, kernel_size, dilation):
    """Stride 1 runs as a sum of shifted copies (fast under XLA): the same values and shape as ``ops.depthwise_conv``
    (two float summation orders: 1e-5)."""
    from keras import ops

    from kws_quant.layers import QuantDepthwiseConv1D

    layer = QuantDepthwiseConv1D(kernel_size, padding=padding, dilation_rate=dilation, use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 30, 5)).astype("float32")
    y = layer(x).numpy()
    span = dilation * (kernel_size - 1)
    xx = np.pad(x, [(0, 0), (span, 0), (0, 0)]) if padding == "causal" else x
    ref = ops.depthwise_conv(xx, layer.kernel[:, :, None], strides=1, padding="valid" if padding == "causal"
                             else padding, dilation_rate=dilation).numpy()
    assert y.shape == ref.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(y, ref, atol=1e-5)
