"""LiteRT export: exact integer codes, LiteRT-vs-Keras agreement, float baseline, CLI, and error messages."""
import os
import re

import keras
import numpy as np
import pytest

import kws_quant  # noqa: F401  (registers the layers)
from kws_quant import qat
from kws_quant.export import tflite as T
from kws_quant.export.tflite import flatbuffer
from kws_quant.layers import QuantActivation, QuantBatchNormalization, QuantDense
from kws_quant.models import KWSModelConfig, build_kws_model
from shared_data import FSDD_RECORDINGS as FSDD

pytest.importorskip("ai_edge_litert")

TANH4 = "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')"
TANH8 = "tanh(bits=8, mode='symmetric', per_channel=True, output_scale='max')"
LIN8 = "linear(bits=8)"


def logmel_like(rng, n, frames=98, mels=40):
    """Random windows with log-mel-like structure: a per-window spectral level, slow drift over time, noise."""
    level = rng.normal(-4.0, 1.5, size=(n, 1, mels))
    drift = np.cumsum(rng.normal(0.0, 0.3, size=(n, frames, mels)), axis=1) * 0.3
    return (level + drift + rng.normal(0.0, 0.5, size=(n, frames, mels))).astype(np.float32)


def train_a_little(model, rng, n=256, epochs=1, classes=12):
    """A few QAT steps (the model starts in stage 2), enough to set moving-average ranges and BN statistics."""
    x, y = logmel_like(rng, n, *model.input_shape[1:]), rng.integers(0, classes, n)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def observe(model, rng, batches=4, n=64):
    """Training-mode forward passes without an optimizer: sets moving-average ranges and BN statistics quickly."""
    for _ in range(batches):
        model(logmel_like(rng, n, *model.input_shape[1:]), training=True)
    return model


def errors_in_steps(model, path, windows):
    """|LiteRT - Keras| / output step, for every logit of every window."""
    keras_out = np.asarray(model(windows, training=False))
    lite_out = T.run_tflite(path, windows)
    return np.abs(lite_out - keras_out) / T.output_step(path), keras_out, lite_out


@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    """The ~250K-parameter KWS model, tanh4 recipe, a few QAT steps; its int8 and float exports."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = train_a_little(build_kws_model(KWSModelConfig(), 12, "tanh4"), rng)
    assert qat.get_stage(model) == 2
    out = tmp_path_factory.mktemp("export")
    rep = logmel_like(rng, 128)
    return {"model": model, "rng": rng, "rep": rep, "dir": out,
            "int8": T.to_tflite(model, out / "kws_int8.tflite", rep),
            "float": T.to_tflite_float(model, out / "kws_f32.tflite")}


def folded_expectation(model):
    """Per dense layer, what the export must write, computed from the layers' own quantized_weights():
    codes (TFLite [out, in] layout) and per-channel scales, with the following batch-norm's gain folded in."""
    layers = {layer.name: layer for layer in model.layers}
    expected = []
    for name in ("dense_in", "dense_1", "dense_2", "dense_out"):
        kernel = layers[name].quantized_weights()["kernel"]
        codes = kernel.codes.astype(np.int64).T
        scale = np.broadcast_to(kernel.scale, (codes.shape[0],)).astype(np.float64)
        bn = layers.get(name.replace("dense_in", "bn_0").replace("dense_", "bn_"))
        if name != "dense_out":
            gain = bn.quantized_weights()["gain"].dequantize().astype(np.float64)
            codes = codes * np.where(gain < 0, -1, 1)[:, None]
            scale = scale * np.abs(gain)
        expected.append((name, codes, scale))
    return expected


def op_names(path) -> list:
    m = flatbuffer.load_object(path)
    return [flatbuffer.op_name(m, op) for op in m.subgraphs[0].operators]


def test_int8_weights_are_exactly_the_quantizer_codes(kws):
    ops = T.read_linear_ops(kws["int8"])
    fcs = [d for d in ops if d["op"] == "FULLY_CONNECTED"]
    assert [d["op"] for d in ops] == ["FULLY_CONNECTED"] * 4
    for got, (name, codes, scale) in zip(fcs, folded_expectation(kws["model"])):
        w = got["weights"]
        assert got["weight_type"] == "INT8" and w.dtype == np.int8, name
        np.testing.assert_array_equal(w, codes, err_msg=name)
        np.testing.assert_allclose(got["scale"], scale, rtol=1e-6, err_msg=name)
        assert np.all(got["zero_point"] == 0) and len(got["scale"]) == w.shape[0]  # per-channel, symmetric
        # 4-bit symmetric grid: values in [-7, 7], at most 15 distinct per output channel
        assert w.min() >= -7 and w.max() <= 7, name
        assert max(len(np.unique(row)) for row in w) <= 15, name
    # ReLU fused into the hidden layers; int32 biases on the patched scales
    assert [d["fused_activation"] for d in fcs] == ["RELU", "RELU", "RELU", "NONE"]
    for got in fcs:
        assert got["bias"].dtype == np.int32
        np.testing.assert_allclose(got["bias_scale"], got["input_scale"][0] * got["scale"], rtol=1e-6)
    # the folded offset of bn_0 is dense_in's bias, to within half a bias step
    bn0 = kws["model"].get_layer("bn_0").quantized_weights()["offset"].dequantize()
    np.testing.assert_allclose(fcs[0]["bias"] * fcs[0]["bias_scale"], bn0, atol=0.5 * fcs[0]["bias_scale"].max())
    # the front end: float pooling, then bn_in as MUL + ADD on the pooled frames, then the input quantizer
    assert op_names(kws["int8"]) == ["RESHAPE", "AVERAGE_POOL_2D", "MUL", "ADD", "QUANTIZE", "RESHAPE"] + \
        ["FULLY_CONNECTED"] * 4 + ["DEQUANTIZE"]
    pool = next(d for d in T.make_interpreter(kws["int8"])._get_ops_details() if d["op_name"] == "AVERAGE_POOL_2D")
    assert T.make_interpreter(kws["int8"]).get_tensor_details()[pool["inputs"][0]]["dtype"] == np.float32


def test_litert_runs_one_window_per_invoke_and_matches_keras(kws):
    interp = T.make_interpreter(kws["int8"])
    inp = interp.get_input_details()[0]
    assert list(inp["shape"]) == [1, 98, 40]  # one streaming window per invoke
    windows = logmel_like(kws["rng"], 64)
    # within one output step of the Keras model, with XNNPACK and with the builtin kernels
    err, keras_out, lite_out = errors_in_steps(kws["model"], kws["int8"], windows)
    assert err.max() <= 1.0, err.max()
    assert np.mean(keras_out.argmax(1) == lite_out.argmax(1)) >= 0.95
    builtin = T.run_tflite(None, windows, T.make_interpreter(kws["int8"], xnnpack=False))
    assert np.abs(builtin - keras_out).max() <= T.output_step(kws["int8"])
    # nothing to fold: the pooling runs before the input quantizer
    with pytest.raises(ValueError, match="fold_pooling=True, but model 'kws' has no AveragePooling1D"):
        T.to_tflite(kws["model"], kws["dir"] / "kws_fold.tflite", kws["rep"], fold_pooling=True)


def quantized_then_pooled_model(seed=0):
    """input quantizer → AveragePooling1D(2) → flatten → dense(tanh4) → BN → ReLU 8-bit → dense: the pooling
    averages quantized frames (half steps of the input grid), which an int8 tensor cannot hold."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((20, 8))
    x = QuantActivation(quantizer=LIN8, name="input_quant")(inp)
    x = keras.layers.AveragePooling1D(2, name="pool")(x)
    x = keras.layers.Flatten()(x)
    x = QuantDense(24, use_bias=False, kernel_quantizer=TANH4, name="hidden")(x)
    x = QuantBatchNormalization(gain_quantizer=LIN8, offset_quantizer=LIN8, name="bn")(x)
    x = QuantActivation("relu", quantizer=LIN8, name="act")(x)
    return keras.Model(inp, QuantDense(6, kernel_quantizer=TANH8, bias_quantizer=LIN8, name="out")(x))


def test_pooling_after_the_input_quantizer_as_depthwise_conv_or_folded(tmp_path):
    rng = np.random.default_rng(7)
    model = observe(quantized_then_pooled_model(), rng)
    rep, windows = logmel_like(rng, 128, 20, 8), logmel_like(rng, 128, 20, 8)
    # default: an int8 depthwise conv with weights exactly 1/2, re-quantized to the input grid (one XNNPACK
    # partition); rounding the half steps puts some outputs a little over one step from Keras
    path = T.to_tflite(model, tmp_path / "pooled.tflite", rep)
    ops = T.read_linear_ops(path)
    assert [d["op"] for d in ops] == ["DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    np.testing.assert_allclose(ops[0]["weights"] * ops[0]["scale"], 0.5, rtol=1e-6)
    err, keras_out, lite_out = errors_in_steps(model, path, windows)
    assert np.mean(err <= 1.0) >= 0.95 and err.max() <= 2.5, (np.mean(err <= 1.0), err.max())
    # folded into the dense kernel (rows repeated per frame, same codes, half the scale): within one step
    exact = T.to_tflite(model, tmp_path / "folded.tflite", rep, fold_pooling=True)
    dense = T.read_linear_ops(exact)[0]
    codes = model.get_layer("hidden").quantized_weights()["kernel"].codes.T  # [24, 10 * 8]
    assert dense["weights"].shape == (24, 20 * 8) and dense["weights"].min() >= -7
    np.testing.assert_array_equal(np.abs(dense["weights"].reshape(24, 10, 2, 8)[:, :, 0]),
                                  np.abs(codes.reshape(24, 10, 8)))
    err, _, _ = errors_in_steps(model, exact, windows)
    assert err.max() <= 1.0, err.max()


def test_int4_packing_keeps_codes_and_outputs(kws):
    packed = T.to_tflite(kws["model"], kws["dir"] / "kws_int4.tflite", kws["rep"], int4=True)
    plain, small = T.read_linear_ops(kws["int8"]), T.read_linear_ops(packed)
    for a, b in zip(plain, small):
        assert b["weight_type"] == "INT4"
        np.testing.assert_array_equal(a["weights"], b["weights"])
        np.testing.assert_array_equal(a["scale"], b["scale"])
    windows = logmel_like(kws["rng"], 8)
    np.testing.assert_array_equal(T.run_tflite(packed, windows), T.run_tflite(kws["int8"], windows))
    assert os.path.getsize(packed) < 0.6 * os.path.getsize(kws["int8"])


def test_float_export_is_the_baseline(kws):
    ops = T.read_linear_ops(kws["float"])
    assert [d["weight_type"] for d in ops] == ["FLOAT32"] * 4
    assert os.path.getsize(kws["float"]) > 3.5 * os.path.getsize(kws["int8"])
    # a float-recipe model exports to float and matches Keras
    keras.utils.set_random_seed(1)
    model = observe(build_kws_model(KWSModelConfig(hidden=(32, 32)), 12, "float"), kws["rng"])
    path = T.to_tflite_float(model, kws["dir"] / "float_recipe.tflite")
    windows = logmel_like(kws["rng"], 4)
    np.testing.assert_allclose(T.run_tflite(path, windows), model(windows, training=False), rtol=1e-4, atol=1e-4)


def small_qat_model(bn_before_dense=False, seed=0):
    """input quantizer → flatten → [BN] → dense(tanh4) → BN → ReLU 8-bit → dense(tanh8, bias): no pooling."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((20, 8))
    x = QuantActivation(quantizer=LIN8, name="input_quant")(inp)
    x = keras.layers.Flatten()(x)
    if bn_before_dense:
        x = QuantBatchNormalization(gain_quantizer=LIN8, offset_quantizer=LIN8, name="bn_pre")(x)
    x = QuantDense(24, use_bias=False, kernel_quantizer=TANH4, name="hidden")(x)
    x = QuantBatchNormalization(gain_quantizer=LIN8, offset_quantizer=LIN8, name="bn")(x)
    x = QuantActivation("relu", quantizer=LIN8, name="act")(x)
    out = QuantDense(6, kernel_quantizer=TANH8, bias_quantizer=LIN8, name="out")(x)
    return keras.Model(inp, out)


def test_model_without_pooling_matches_keras_within_one_step(tmp_path):
    rng = np.random.default_rng(3)
    model = observe(small_qat_model(), rng)
    path = T.to_tflite(model, tmp_path / "small.tflite", logmel_like(rng, 128, 20, 8))
    interp = T.make_interpreter(path)
    assert interp.get_input_details()[0]["dtype"] == np.int8  # nothing in float before the input quantizer
    s, z = interp.get_input_details()[0]["quantization"]
    input_q = model.get_layer("input_quant")
    assert np.isclose(s, (float(input_q.quantizer_state("output")["max"]) - min(float(input_q.quantizer_state("output")["min"]), 0))
                      / 255, rtol=1e-5)
    err, _, _ = errors_in_steps(model, path, logmel_like(rng, 128, 20, 8))
    assert err.max() <= 1.0, err.max()


def test_batchnorm_before_dense_is_folded_into_kernel_rows(tmp_path):
    rng = np.random.default_rng(4)
    model = observe(small_qat_model(bn_before_dense=True), rng)
    path = T.to_tflite(model, tmp_path / "bn_pre.tflite", logmel_like(rng, 64, 20, 8))
    hidden = T.read_linear_ops(path)[0]
    # expected: W' = diag(g_pre) · dequantized tanh codes · g_post, re-quantized to int8 per output channel
    kernel = model.get_layer("hidden").quantized_weights()["kernel"].dequantize().astype(np.float64)
    g_pre = model.get_layer("bn_pre").quantized_weights()["gain"].dequantize().astype(np.float64)
    g_post = model.get_layer("bn").quantized_weights()["gain"].dequantize().astype(np.float64)
    folded = (g_pre[:, None] * kernel * g_post).T
    scale = np.abs(folded).max(axis=1) / 127
    np.testing.assert_array_equal(hidden["weights"], np.clip(np.round(folded / scale[:, None]), -127, 127))
    np.testing.assert_allclose(hidden["scale"], scale, rtol=1e-6)
    # the dense after it keeps its exact codes
    out_codes = model.get_layer("out").quantized_weights()["kernel"].codes
    np.testing.assert_array_equal(T.read_linear_ops(path)[1]["weights"], out_codes.T)
    err, _, _ = errors_in_steps(model, path, logmel_like(rng, 64, 20, 8))
    assert np.mean(err <= 1.0) >= 0.97 and err.max() <= 2.0


def test_float_model_to_int8_lists_the_layers_without_quantizers(tmp_path):
    model = build_kws_model(KWSModelConfig(hidden=(16, 16)), 4, "float")
    with pytest.raises(ValueError) as e:
        T.to_tflite(model, tmp_path / "x.tflite")
    msg = str(e.value)
    for part in ("input_quant (output)", "dense_in (kernel)", "act_0 (output)", "dense_1 (kernel)",
                 "dense_out (kernel)"):
        assert part in msg, msg
    assert not (tmp_path / "x.tflite").exists()


def test_unsupported_layer_and_topology_are_named(tmp_path):
    inp = keras.Input((10, 4))
    x = QuantActivation(quantizer=LIN8, name="input_quant")(inp)
    x = keras.layers.LayerNormalization(name="my_layernorm")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, QuantDense(3, kernel_quantizer=TANH4, name="out")(x))
    with pytest.raises(ValueError, match=r"'my_layernorm' \(LayerNormalization\) is not supported"):
        T.to_tflite(model, tmp_path / "x.tflite")
    inp = keras.Input((6,))
    a, b = keras.layers.Dense(3, name="a")(inp), keras.layers.Dense(3, name="b")(inp)
    branchy = keras.Model(inp, keras.layers.Add(name="join")([a, b]))
    with pytest.raises(ValueError, match="chain of layers"):
        T.to_tflite_float(branchy, tmp_path / "y.tflite")


def test_model_not_in_stage_2_is_rejected(tmp_path):
    model = observe(small_qat_model(), np.random.default_rng(5), batches=1)
    qat.set_stage(model, 1)
    with pytest.raises(ValueError, match="stage 1.*needs stage 2"):
        T.to_tflite(model, tmp_path / "x.tflite", logmel_like(np.random.default_rng(0), 8, 20, 8))
    # an untrained (never observed) range is named too
    fresh = small_qat_model(seed=1)
    with pytest.raises(ValueError, match="'input_quant'.*never updated"):
        T.to_tflite(fresh, tmp_path / "x.tflite")


def test_missing_output_directory_is_created_and_cli(kws, tmp_path):
    model_path = tmp_path / "model.keras"
    kws["model"].save(model_path)
    np.save(tmp_path / "rep.npy", kws["rep"][:32])
    from kws_quant.export.__main__ import run

    out = tmp_path / "new" / "nested" / "model.tflite"
    written = run(["export", f"--model={model_path}", f"--out={out}", f"--representative={tmp_path / 'rep.npy'}"])
    assert written == str(out) and out.exists()
    windows = logmel_like(kws["rng"], 4)
    np.testing.assert_allclose(T.run_tflite(str(out), windows), kws["model"](windows, training=False),
                               atol=2.0 * T.output_step(str(out)))
    out_f = tmp_path / "other" / "model_f32.tflite"
    run(["export", f"--model={model_path}", f"--out={out_f}", "--float"])
    assert [d["weight_type"] for d in T.read_linear_ops(str(out_f))] == ["FLOAT32"] * 4
    out_s = tmp_path / "split" / "core.tflite"
    run(["export", f"--model={model_path}", f"--out={out_s}", "--split_front_end", "--strip_names",
         f"--representative={tmp_path / 'rep.npy'}"])
    assert (tmp_path / "split" / "core.front_end.json").exists()
    assert T.make_interpreter(str(out_s)).get_input_details()[0]["dtype"] == np.int8


def test_conv_model_exports_exact_codes(tmp_path):
    """The strided-conv ('tdnn') KWS variant: CONV_2D ops carry the tanh codes, BN gain folded into the scales."""
    rng = np.random.default_rng(6)
    keras.utils.set_random_seed(6)
    model = observe(build_kws_model(KWSModelConfig(arch="tdnn", hidden=(16, 16)), 5, "tanh4"), rng)
    path = T.to_tflite(model, tmp_path / "tdnn.tflite", logmel_like(rng, 32))
    ops = T.read_linear_ops(path)
    assert [d["op"] for d in ops] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    for got, name, bn in zip(ops, ("dense_in", "conv_1"), ("bn_0", "bn_1")):
        codes = model.get_layer(name).quantized_weights()["kernel"].codes  # [k, in, out]
        gain = model.get_layer(bn).quantized_weights()["gain"].dequantize()
        want = np.moveaxis(codes, -1, 0) * np.where(gain < 0, -1, 1)[:, None, None]
        np.testing.assert_array_equal(got["weights"].reshape(want.shape), want)
    err, _, _ = errors_in_steps(model, path, logmel_like(rng, 32))
    assert err.max() <= 1.0, err.max()


# -- real speech features ------------------------------------------------------------------------------------------
SPEECH_TEXTS = ("hey computer", "seven", "turn the lights on", "what time is it", "no", "computer stop")


def speech_windows(source: str, rng, frames=98):
    """1 s log-mel windows (the model's input) of real audio: eSpeak NG speech, or FSDD recordings when available,
    each clip centred in the window over low noise (40 dB below full scale), features by the librosa reference."""
    from kws_quant.data.audio import fit_length, load_audio
    from kws_quant.data.espeak import synthesize
    from kws_quant.features import FeatureConfig, logmel_librosa

    cfg = FeatureConfig()
    samples = cfg.win_length + (frames - 1) * cfg.hop_length
    if source == "espeak":
        clips = [synthesize(t, voice=v, rate=r, pitch=p) for t in SPEECH_TEXTS
                 for v, r, p in (("en-us", 160, 40), ("en", 200, 60), ("en-us+f3", 180, 55))]
    else:
        names = sorted(os.listdir(FSDD))[::40]
        clips = [load_audio(os.path.join(FSDD, n), cfg.sample_rate) for n in names]
    out = []
    for clip in clips:
        audio = fit_length(clip, samples) + rng.normal(0.0, 0.01, samples).astype(np.float32)
        out.append(logmel_librosa(audio, cfg))
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("source", [
    "espeak", pytest.param("fsdd", marks=pytest.mark.skipif(not os.path.isdir(FSDD), reason="FSDD not available"))])
def test_litert_matches_keras_on_real_speech_features(tmp_path, source):
    """Moving-average ranges set on real log-mel windows, exported, and compared on other real windows."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    windows = speech_windows(source, rng)
    assert windows.shape[1:] == (98, 40) and len(windows) >= 18
    calib, test = windows[::2], windows[1::2]
    model = build_kws_model(KWSModelConfig(), 12, "tanh4")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(np.concatenate([calib] * 8), rng.integers(0, 12, 8 * len(calib)), epochs=1, batch_size=16, verbose=0)
    path = T.to_tflite(model, tmp_path / f"{source}_int8.tflite", calib)
    err, keras_out, lite_out = errors_in_steps(model, path, test)
    assert err.max() <= 1.0, err.max()
    assert np.mean(keras_out.argmax(1) == lite_out.argmax(1)) >= 0.9


def test_per_channel_vectors_are_stored_once_and_names_can_be_stripped(kws):
    """Identical zero-point vectors (all zeros, one per per-channel weight and bias tensor) are written once: the
    plain flatbuffer serialization of the same model is larger by 5 × 112 + 12 int64 zeros, reads back the same
    parameters and gives the same outputs."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    plain = bytes(fu.convert_object_to_bytearray(flatbuffer.load_object(kws["int8"])))
    shared = open(kws["int8"], "rb").read()
    assert len(plain) - len(shared) >= 8 * (5 * 112 + 12)
    for a, b in zip(T.read_linear_ops(plain), T.read_linear_ops(shared)):
        for key in ("weights", "scale", "zero_point", "bias", "bias_scale"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert len(b["zero_point"]) == len(b["scale"]) == len(b["bias_scale"])
    windows = logmel_like(kws["rng"], 8)
    np.testing.assert_array_equal(T.run_tflite(plain, windows), T.run_tflite(shared, windows))
    # strip_names: only the input and output tensors keep names; the signature still runs; same outputs
    stripped = T.to_tflite(kws["model"], kws["dir"] / "stripped.tflite", kws["rep"], strip_names=True)
    interp = T.make_interpreter(stripped)
    named = [d["name"] for d in interp.get_tensor_details() if d["name"]]
    assert len(named) == 2 and os.path.getsize(stripped) < len(shared) - 200
    np.testing.assert_array_equal(T.run_tflite(stripped, windows), T.run_tflite(shared, windows))
    runner = interp.get_signature_runner()
    np.testing.assert_array_equal(runner(window=windows[:1])["output_0"], T.run_tflite(shared, windows[:1]))
    f_stripped = T.to_tflite_float(kws["model"], kws["dir"] / "f_stripped.tflite", strip_names=True)
    assert os.path.getsize(f_stripped) < os.path.getsize(kws["float"])


def test_split_front_end_gives_an_all_int8_model(kws, tmp_path):
    """split_front_end: bn_in and the pooling move to a per-frame FrontEnd (JSON next to the .tflite); the model
    takes the input quantizer's int8 window, has no float op, and FrontEnd.apply + LiteRT is within one output step
    of the Keras model."""
    from kws_quant.export.front_end import FrontEnd, load_front_end

    path = T.to_tflite(kws["model"], tmp_path / "core.tflite", kws["rep"], split_front_end=True)
    assert op_names(path) == ["RESHAPE"] + ["FULLY_CONNECTED"] * 4
    inp, out = T.make_interpreter(path).get_input_details()[0], T.make_interpreter(path).get_output_details()[0]
    assert list(inp["shape"]) == [1, 49, 40] and inp["dtype"] == np.int8 and out["dtype"] == np.int8
    front = load_front_end(path)
    assert (tmp_path / "core.front_end.json").exists() and load_front_end(tmp_path / "core.front_end.json") == front
    assert [s["op"] for s in front.steps] == ["affine", "average_pool"] and front.output_shape == (49, 40)
    assert (front.scale, front.zero_point) == (pytest.approx(inp["quantization"][0]), inp["quantization"][1])
    bn_in = kws["model"].get_layer("bn_in").quantized_weights()
    np.testing.assert_allclose(front.steps[0]["gain"], bn_in["gain"].dequantize(), rtol=1e-6)
    # the front end's int8 window is the Keras input quantizer's output, code for code
    windows = logmel_like(kws["rng"], 32)
    upto = keras.Model(kws["model"].inputs, kws["model"].get_layer("input_quant").output)
    want = T.quantize_input(np.asarray(upto(windows, training=False)), front.scale, front.zero_point)
    assert np.mean(front.apply(windows) == want) > 0.9999
    keras_out = np.asarray(kws["model"](windows, training=False))
    err = np.abs(T.run_tflite(path, front.apply(windows)) - keras_out) / T.output_step(path)
    assert err.max() <= 1.0, err.max()
    # streaming: one output frame per input frame; every window of the stream is a strided slice of them
    stream = logmel_like(kws["rng"], 1, frames=140)[0]
    per_frame = front.frames(stream)
    assert per_frame.shape == (139, 40) and per_frame.dtype == np.int8
    for start in (0, 1, 17, 42):  # exact: both paths do the same float operations in the same order (elementwise
        # affine, then the p pooled values summed in index order), only the array layout differs
        np.testing.assert_array_equal(front.window(per_frame, start), front.apply(stream[start:start + 98])[0])
    with pytest.raises(ValueError, match="a window starting at frame 43 needs 97 frame outputs"):
        front.window(per_frame, 43)
    # smaller than the default export (no float ops, constants or QUANTIZE/DEQUANTIZE)
    assert os.path.getsize(path) < os.path.getsize(kws["int8"]) - 1000
    # float split: the same core in float32, equal to the full float export
    f_path = T.to_tflite_float(kws["model"], tmp_path / "core_f32.tflite", split_front_end=True)
    np.testing.assert_allclose(T.run_tflite(f_path, load_front_end(f_path).apply(windows)),
                               T.run_tflite(kws["float"], windows), rtol=1e-4, atol=1e-4)
    # bad input: wrong window shape, a broken front-end file
    with pytest.raises(ValueError, match=r"windows must have shape \[n, 98, 40\]"):
        front.apply(windows[:, :50])
    bad = tmp_path / "bad.front_end.json"
    bad.write_text('{"format": "kws_quant.front_end/1", "steps": [{"op": "fft"}], "input_shape": [1], '
                   '"output_shape": [1]}')
    with pytest.raises(ValueError, match=r"bad.front_end.json: steps\[0\] field 'op' is 'fft'"):
        load_front_end(bad)
    with pytest.raises(FileNotFoundError, match="no front end here"):
        load_front_end(tmp_path / "missing.tflite")
    assert isinstance(front, FrontEnd)


def test_split_front_end_refuses_a_float_prefix_it_cannot_move(tmp_path):
    """A 'same'-padded pooling before the input quantizer cannot run per frame: the error names it."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((20, 8))
    x = keras.layers.AveragePooling1D(2, padding="same", name="same_pool")(inp)
    x = QuantActivation(quantizer=LIN8, name="input_quant")(x)
    x = keras.layers.Flatten()(x)
    model = observe(keras.Model(inp, QuantDense(3, kernel_quantizer=TANH4, name="out")(x)),
                    np.random.default_rng(2))
    with pytest.raises(ValueError, match="split_front_end=True: same_pool .*cannot move to the per-frame front end"):
        T.to_tflite(model, tmp_path / "x.tflite", logmel_like(np.random.default_rng(0), 8, 20, 8),
                    split_front_end=True)


@pytest.mark.parametrize("spec, narrow", [("linear(bits=8)", False), ("linear(bits=8, symmetric=True)", True)])
def test_quantize_codes_is_the_keras_input_quantizer(spec, narrow):
    """quantize_codes gives the Keras input quantizer's code for every value, beyond the range too; on a value
    within a float32 rounding error of a step boundary it may pick the neighbouring code (TF's own eager and XLA
    fake-quant kernels differ there as well)."""
    from kws_quant.export.front_end import quantize_codes

    rng = np.random.default_rng(8)
    layer = QuantActivation(quantizer=spec, name="input_quant")
    for _ in range(3):
        layer(rng.normal(-1.0, 2.0, size=(64, 40)).astype(np.float32), training=True)
    ic = layer.quantizers["output"].codes(np.zeros((), np.float32), layer.quantizer_state("output"))
    s, zp = np.float32(ic.scale), int(ic.zero_point) - (0 if ic.signed else 128)
    lo = np.float32((1 if narrow else 0) - (zp + 128)) * s

    def keras_codes(x):
        y = np.asarray(layer(x[None], training=False))[0].astype(np.float64)
        return np.round((y - lo) / s).astype(np.int64) + (1 if narrow else 0) - 128

    x = rng.normal(-1.0, 3.0, 50000).astype(np.float32)  # ~10 % beyond the range on each side
    np.testing.assert_array_equal(quantize_codes(x, s, zp, narrow), keras_codes(x))
    assert keras_codes(x).min() == (-127 if narrow else -128) and keras_codes(x).max() == 127
    ties = lo + (np.arange(0, 255, dtype=np.float32) + np.float32(0.5)) * s
    assert np.abs(quantize_codes(ties, s, zp, narrow).astype(np.int64) - keras_codes(ties)).max() <= 1


def test_per_tensor_kernels_get_per_tensor_parameters(tmp_path):
    """A per-tensor kernel quantizer with no batch-norm folded in has one scale for all channels: the export writes
    one scale and zero point for the weights and for the bias (not one per channel) and still matches Keras."""
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    per_tensor = "tanh(bits=8, mode='symmetric', per_channel=False, output_scale='max')"
    inp = keras.Input((20, 8))
    x = QuantActivation(quantizer=LIN8, name="input_quant")(inp)
    x = keras.layers.Flatten()(x)
    x = QuantDense(48, activation="relu", kernel_quantizer=per_tensor, bias_quantizer=LIN8, name="hidden")(x)
    x = QuantActivation(quantizer=LIN8, name="act")(x)
    model = train_a_little(keras.Model(inp, QuantDense(6, kernel_quantizer=per_tensor, bias_quantizer=LIN8,
                                                       name="out")(x)), rng, classes=6)  # non-zero biases
    path = T.to_tflite(model, tmp_path / "per_tensor.tflite", logmel_like(rng, 64, 20, 8))
    for got, name in zip(T.read_linear_ops(path), ("hidden", "out")):
        ic = model.get_layer(name).quantized_weights()["kernel"]
        assert len(got["scale"]) == len(got["zero_point"]) == len(got["bias_scale"]) == 1, name
        np.testing.assert_allclose(got["scale"][0], np.asarray(ic.scale).reshape(-1)[0], rtol=1e-6)
        np.testing.assert_array_equal(got["weights"], ic.codes.T)
    err, _, _ = errors_in_steps(model, path, logmel_like(rng, 64, 20, 8))
    assert err.max() <= 1.0, err.max()


def test_export_cli_bad_input_is_one_error_line_naming_the_flag(kws, tmp_path, capsys):
    """No traceback: a missing/odd model file, an output path that is a directory, a negative margin, an unreadable
    representative file, a float model asked for int8 — each an ``error:`` line and exit status 2."""
    from kws_quant.export.__main__ import main

    model_path = tmp_path / "model.keras"
    kws["model"].save(model_path)
    float_path = tmp_path / "float.keras"
    build_kws_model(KWSModelConfig(window_frames=20, n_mels=8, hidden=(8,)), 3).save(float_path)
    (tmp_path / "junk.keras").write_text("not a model")
    (tmp_path / "junk.npy").write_text("not an array")
    out = tmp_path / "m.tflite"
    cases = [
        ([f"--model={tmp_path / 'missing.keras'}", f"--out={out}"], "missing.keras' does not exist"),
        ([f"--model={tmp_path}", f"--out={out}"], "is a directory, not a .keras file"),
        ([f"--model={tmp_path / 'junk.keras'}", f"--out={out}"], "is not a Keras model file"),
        ([f"--model={model_path}", f"--out={tmp_path}"], "is a directory; give the path of the .tflite"),
        ([f"--model={model_path}", f"--out={out}", "--output_margin=-5"], "--output_margin=-5.0 must be between 0"),
        ([f"--model={model_path}", f"--out={out}", f"--representative={tmp_path / 'junk.npy'}"],
         "junk.npy' is not a readable .npy array"),
        ([f"--model={float_path}", f"--out={out}"], "float.keras' cannot be exported as asked: .*"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err.splitlines()[0]), (message, err[:500])
        assert "Traceback" not in err
    assert not out.exists()
