"""TF-MOT bridge, run in its own legacy-Keras subprocess (TF_USE_LEGACY_KERAS=1): our tanh kernel quantizer inside
``quantize_annotate_layer``/``quantize_apply`` trains, and the quantized kernel is METHODS §1's formula."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.subprocess  # the bridge runs in its own legacy-Keras process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if importlib.util.find_spec("tensorflow_model_optimization") is None or importlib.util.find_spec("tf_keras") is None:
    pytest.skip("the [tfmot] extra (tensorflow-model-optimization, tf-keras) is not installed", allow_module_level=True)

TANH4 = "tanh(bits=4)"  # dorefa grid, per tensor: 16 levels
TANH4_CHANNEL = "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')"

SCRIPT = textwrap.dedent(f"""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from kws_quant import tfmot_bridge as bridge

    assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((12,)),
        bridge.annotate(tf.keras.layers.Dense(16, activation="relu"), kernel={TANH4!r}, activation="linear(bits=8)"),
        bridge.annotate(tf.keras.layers.Dense(3), kernel={TANH4_CHANNEL!r}, bias="linear(bits=8)"),
    ])
    qat = bridge.quantize_apply(model)
    wrappers = [l for l in qat.layers if hasattr(l, "quantize_config")]
    initial = [bridge.latent_weights(w)["kernel"] for w in wrappers]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 12)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    qat.compile(tf.keras.optimizers.Adam(0.01), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = qat.fit(x, y, epochs=4, batch_size=32, verbose=0).history["loss"]
    arrays = {{}}
    for i, w in enumerate(wrappers):
        arrays[f"kernel{{i}}"] = bridge.latent_weights(w)["kernel"]
        arrays[f"initial{{i}}"] = initial[i]
        for role, value in bridge.quantized_weights(w).items():
            arrays[f"q_{{role}}{{i}}"] = value
        arrays[f"codes{{i}}"] = bridge.quantized_weights(w, codes=True)["kernel"].codes
    ema = {{v.name: float(v.numpy()) for v in wrappers[0].weights if "ema_m" in v.name}}
    # the inference forward pass uses the quantized kernel: the first layer's output, recomputed by hand
    probe = tf.keras.Model(qat.inputs, wrappers[0].output)
    xq = np.asarray(qat.layers[0](x[:8], training=False))  # TF-MOT's own input QuantizeLayer
    expect = tf.nn.relu(xq @ arrays["q_kernel0"] + np.asarray(wrappers[0].layer.bias))
    got = probe(x[:8], training=False)
    lo = next(v for k, v in ema.items() if "ema_min" in k)
    hi = next(v for k, v in ema.items() if "ema_max" in k)
    arrays["forward_err"] = np.abs(np.asarray(got) - tf.quantization.fake_quant_with_min_max_vars(
        expect, min(lo, 0.0), max(hi, 0.0))).max(keepdims=True)
    np.savez(sys.argv[1], **arrays)
    print(json.dumps({{"loss": loss, "ema": ema, "keras": tf.keras.__name__}}))
""")


@pytest.fixture(scope="module")
def bridge_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tfmot") / "arrays.npz"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, dict(np.load(out))


def tanh_dorefa(w, bits):
    """METHODS §1, mode='dorefa', per tensor, no output scale."""
    t = np.tanh(w) / np.max(np.abs(np.tanh(w)))
    n = np.round((2 ** bits - 1) * (t + 1) / 2)
    return 2 * n / (2 ** bits - 1) - 1


def tanh_symmetric_per_channel(w, bits):
    """METHODS §1, mode='symmetric', per output channel (last axis), output scale max|W| per channel."""
    t = np.tanh(w) / np.max(np.abs(np.tanh(w)), axis=0, keepdims=True)
    q = np.round((2 ** (bits - 1) - 1) * t)
    return np.max(np.abs(w), axis=0, keepdims=True) * q / (2 ** (bits - 1) - 1)


def test_tanh4_kernel_is_the_methods_formula_after_training(bridge_run):
    info, a = bridge_run
    assert info["keras"].startswith("tf_keras")
    assert info["loss"][-1] < info["loss"][0]  # the straight-through gradient trains the latent kernel
    assert not np.allclose(a["kernel0"], a["initial0"])
    q0 = a["q_kernel0"]
    assert len(np.unique(q0)) <= 16
    np.testing.assert_allclose(q0, tanh_dorefa(a["kernel0"], 4), atol=1e-6)
    q1 = a["q_kernel1"]
    assert max(len(np.unique(q1[:, j])) for j in range(q1.shape[1])) <= 15
    np.testing.assert_allclose(q1, tanh_symmetric_per_channel(a["kernel1"], 4), rtol=1e-6, atol=1e-7)
    assert np.abs(a["codes1"]).max() <= 7
    # bias: 8-bit symmetric linear grid; activation: moving-average range updated in training
    assert len(np.unique(a["q_bias1"])) <= 255
    lo = [v for k, v in info["ema"].items() if "ema_min" in k]
    hi = [v for k, v in info["ema"].items() if "ema_max" in k]
    assert lo and hi and lo[0] <= 0.0 < hi[0]
    assert a["forward_err"].max() < 1e-5


def test_bridge_numerics_equal_the_keras3_quantizers(bridge_run):
    _, a = bridge_run
    from kws_quant import quantizers

    for i, spec in enumerate((TANH4, TANH4_CHANNEL)):
        ours = np.asarray(quantizers.get(spec).fake_quant(a[f"kernel{i}"]))
        np.testing.assert_array_equal(a[f"q_kernel{i}"], ours)


def test_core_does_not_import_tfmot():
    code = ("import sys, kws_quant, kws_quant.export.tflite, kws_quant.models; "
            "print(any(m.startswith(('tensorflow_model_optimization', 'tf_keras')) for m in sys.modules))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
