"""LiteRT int8 export of the zoo's streaming models (kws_quant.export.tflite.to_tflite_streaming): exact codes,
agreement with the Keras StreamingModel step by step, the int8 state round trip, the window form, and errors."""
import json
import os

import keras
import numpy as np
import pytest

import kws_quant  # noqa: F401  (registers the layers)
from eval.memory import streaming_state_bytes
from kws_quant import qat
from kws_quant.export import tflite as T
from kws_quant.export.deployment import export_for_deployment
from kws_quant.export.tflite.stream_export import (LiteRTStreamingModel, check_streaming, keras_stream_logits,
                                                   stream_metadata_path)
from kws_quant.models import KWSModelConfig, build_kws_model
from kws_quant.models.stream_state import to_streaming
from kws_quant.models.zoo import ZOO_ARCHS
from test_zoo import small_model

pytest.importorskip("ai_edge_litert")

# which batch-norm each kernel's export folds in (its gain scales the kernel's per-channel scales)
BN_AFTER = {"dense_in": "bn_0", "dw_1": "bn_dw_1", "pw_1": "bn_1", "dw_2": "bn_dw_2", "pw_2": "bn_2",
            "conv_1a": "bn_1a", "conv_1b": "bn_1b", "conv_2a": "bn_2a", "conv_2b": "bn_2b", "proj_2": "bn_proj_2"}


def data(rng, n):
    """Windows [n, 40, 8] with a learnable 4-class label (the sign of two channels' means)."""
    x = rng.normal(size=(n, 40, 8)).astype("float32")
    return x, (x[:, :, 0].mean(1) > 0).astype("int32") + 2 * (x[:, :, 1].mean(1) > 0)


def trained(arch, recipe="tanh4", seed=0):
    """A tiny zoo model trained a few QAT steps in stage 2 (ranges and batch-norm statistics set, logits apart)."""
    model = small_model(arch, recipe, seed=seed)
    x, y = data(np.random.default_rng(seed), 192)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    assert qat.get_stage(model) == 2
    return model


@pytest.fixture(scope="module", params=["dscnn", "tcresnet"])
def exported(request, tmp_path_factory):
    model = trained(request.param)
    path = T.to_tflite_streaming(model, tmp_path_factory.mktemp("zoo") / f"{request.param}.tflite",
                                 data(np.random.default_rng(1), 96)[0])
    return {"arch": request.param, "model": model, "path": path}


def test_weights_are_exactly_the_quantizers_codes(exported):
    model, found = exported["model"], T.read_linear_ops(exported["path"])
    kernels = [layer for layer in model.layers if "kernel" in getattr(layer, "quantizers", {})]
    assert len(found) == len(kernels) + 1  # + the pooling's average (a depthwise conv of weights 1/T)
    for layer in kernels:
        ic = layer.quantized_weights()["kernel"]
        codes, scale = ic.codes.astype(np.int64), np.broadcast_to(ic.scale, ic.codes.shape[-1:]).astype(np.float64)
        if layer.name in BN_AFTER:
            gain = model.get_layer(BN_AFTER[layer.name]).quantized_weights()["gain"].dequantize().astype(np.float64)
            codes, scale = codes * np.where(gain < 0, -1, 1), scale * np.abs(gain)
        depthwise = layer.name.startswith("dw_")
        # Keras [taps, C] → [1, 1, taps, C] (depthwise); [..., in, out] → [out, ..., in]
        expected = codes.reshape(1, 1, *codes.shape) if depthwise else np.moveaxis(codes, -1, 0)
        hits = [d for d in found if d["weights"].size == codes.size
                and np.array_equal(d["weights"], expected.reshape(d["weights"].shape))]
        assert len(hits) == 1, layer.name
        got = hits[0]
        assert got["weight_type"] == "INT8" and np.abs(got["weights"]).max() <= 7  # the 4-bit symmetric grid
        np.testing.assert_allclose(np.broadcast_to(got["scale"], scale.shape), scale, rtol=1e-6, err_msg=layer.name)
        assert got["op"] == ("DEPTHWISE_CONV_2D" if depthwise else "FULLY_CONNECTED" if layer.name == "dense_out"
                             else "CONV_2D")


def test_litert_stream_agrees_with_the_keras_streaming_model(exported, rng):
    model, path = exported["model"], exported["path"]
    runner = LiteRTStreamingModel(path)
    hops = rng.normal(size=(100, runner.hop, runner.n_mels)).astype("float32")  # 2 s of frames
    lite, ref = runner.run(hops), keras_stream_logits(model, hops)
    err = np.abs(lite - ref) / runner.output_grid[0]
    # an activation code that int8 rounds the other way (and, in TC-ResNet, the rounding of the residual branch
    # before its Add) moves a logit by about a step: in these tiny models (16-24 channels, random frames, logits a
    # few steps apart) 88-98 % of the logits are within one step and the worst 3-7 steps; the trained models of
    # docs/models.md 99.6-99.8 %, the worst 1.7-3.9 steps
    assert np.mean(err <= 1.0) >= 0.85 and err.max() <= 8.0, (np.mean(err <= 1.0), err.max())
    assert np.mean(lite.argmax(1) == ref.argmax(1)) >= 0.95
    # from step first_valid_step on, a window streamed from its first frame gives the window model's logits
    x, _ = data(rng, 32)
    check = check_streaming(model, path, x)
    window = model(x, training=False).numpy()
    assert check["within_one_step"] >= 0.88 and check["argmax_agreement"] >= 0.9
    np.testing.assert_allclose(check["keras_last"], window, atol=1e-4)
    assert np.mean(check["litert_last"].argmax(1) == window.argmax(1)) >= 0.9


def test_state_is_int8_and_round_trips(exported, rng):
    model, path = exported["model"], exported["path"]
    runner, stream = LiteRTStreamingModel(path), to_streaming(model)
    # one int8 state tensor per buffer of the Keras streaming model (no step counter: nothing gates on it)
    assert [runner.state_shapes[n][1:] for n in runner.state_names] == [tuple(s) for s in stream.state_shapes[:-1]]
    state = runner.initial_state()
    assert all(s.dtype == np.int8 and np.all(s == runner.state_grids[n][1]) for n, s in state.items())
    hops = rng.normal(size=(30, runner.hop, runner.n_mels)).astype("float32")
    whole = runner.run(hops)
    # a host loop that stops, keeps the state (e.g. written to memory as bytes) and goes on gives the same logits
    for frames in hops[:17]:
        _, state = runner.step(frames, state)
    saved = {n: np.frombuffer(s.tobytes(), np.int8).reshape(s.shape) for n, s in state.items()}
    again = LiteRTStreamingModel(path)
    rest = []
    for frames in hops[17:]:
        logits, saved = again.step(frames, saved)
        rest.append(logits)
    np.testing.assert_array_equal(np.stack(rest), whole[17:])
    # the stem buffers the input quantizer's codes of the newest frame: the next state is that frame's codes
    scale, zero = runner.state_grids["state_00_dense_in"]
    frames = model.get_layer("input_quant")(model.get_layer("bn_in")(hops[-1:]), training=False).numpy()
    codes = np.round(frames[0, -1] / scale + zero)
    assert np.abs(saved["state_00_dense_in"][0, -1].astype(np.int64) - codes).max() <= 1  # a tie may round apart
    with open(stream_metadata_path(path), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["hop"] == runner.hop == stream.hop and meta["first_valid_step"] == stream.first_valid_step
    assert [(s["name"], tuple(s["shape"]), s["zero_point"]) for s in meta["states"]] == \
        [(n, runner.state_shapes[n], runner.state_grids[n][1]) for n in runner.state_names]


def test_window_form_from_the_same_ops(exported, tmp_path, rng):
    model = exported["model"]
    x, _ = data(rng, 32)
    path = T.to_tflite_window(model, tmp_path / "w.tflite", data(rng, 64)[0])
    def codes(p):
        return sorted(d["weights"].tobytes() for d in T.read_linear_ops(p))

    assert codes(path) == codes(exported["path"])  # the same kernels (the converter may order the ops apart)
    err = np.abs(T.run_tflite(path, x) - model(x, training=False).numpy()) / T.output_step(path)
    assert np.mean(err <= 1.0) >= 0.85 and err.max() <= 8.0, (np.mean(err <= 1.0), err.max())  # tiny models
    f32 = T.to_tflite_window(model, tmp_path / "f.tflite", quantize=False)
    np.testing.assert_allclose(T.run_tflite(f32, x), model(x, training=False).numpy(), atol=0.05)
    step32 = T.to_tflite_streaming(model, tmp_path / "fs.tflite", quantize=False)  # the float32 baseline step
    inputs = T.make_interpreter(step32).get_signature_runner().get_input_details()
    assert {d["dtype"] for d in inputs.values()} == {np.float32}
    assert len(inputs) == len(to_streaming(model).state_shapes)  # frames + the buffers (no step counter)


def test_unsupported_models_name_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    x, _ = data(rng, 16)
    dnn = build_kws_model(KWSModelConfig(window_frames=40, n_mels=8, hidden=(8, 8)), 4, "tanh4")
    with pytest.raises(T.UnsupportedModelError, match="has no streaming form: layer 'pool' \\(AveragePooling1D\\)"):
        T.to_tflite_streaming(dnn, tmp_path / "d.tflite", x)
    with pytest.raises(T.UnsupportedModelError, match="has no quantized layers; the int8 export needs a QAT model"):
        T.to_tflite_streaming(small_model("dscnn"), tmp_path / "f.tflite", x)
    model = small_model("tcresnet", "tanh4")
    qat.set_stage(model, 1)
    with pytest.raises(T.UnsupportedModelError, match="QAT stage 1; the int8 export needs stage 2"):
        T.to_tflite_streaming(model, tmp_path / "t.tflite", x)
    qat.set_stage(model, 2)  # never trained: its moving-average ranges were never set
    with pytest.raises(T.UnsupportedModelError, match="moving-average range was never updated"):
        T.to_tflite_streaming(model, tmp_path / "t.tflite", x)
    with pytest.raises(ValueError, match=r"representative_data must be float windows \[n, 40, 8\]"):
        T.to_tflite_streaming(trained("tcresnet"), tmp_path / "t.tflite", x[:, :20])
    # the window (chain) export points to the streaming one
    with pytest.raises(T.UnsupportedModelError, match="has a streaming form: export it with .*to_tflite_streaming"):
        T.to_tflite(model, tmp_path / "w.tflite", x)


def test_crnn_streams_with_hybrid_lstm_projections_and_a_float_cell(tmp_path, rng):
    """The CRNN's export: its LSTM's two projections hold the kernel's and the recurrent kernel's exact codes and
    per-unit scales as int8 weights of hybrid FULLY_CONNECTED ops (float in and out); h, c and the step count are
    float32 states, the conv buffers int8; the stream agrees with the Keras StreamingModel and a
    stopped and resumed host loop gives the same logits. It has no separate window form."""
    model = trained("crnn")
    x, _ = data(rng, 32)
    path = T.to_tflite_streaming(model, tmp_path / "c.tflite", data(rng, 96)[0])
    lstm, found = model.get_layer("lstm"), T.read_linear_ops(path)
    weights = lstm.quantized_weights()
    for role in ("kernel", "recurrent_kernel"):
        ic = weights[role]
        hits = [d for d in found if d["weights"].shape == ic.codes.shape[::-1]
                and np.array_equal(d["weights"], np.moveaxis(ic.codes, -1, 0))]
        assert len(hits) == 1 and hits[0]["op"] == "FULLY_CONNECTED" and hits[0]["weight_type"] == "INT8", role
        assert hits[0]["input_scale"].size == 0  # a float input: LiteRT's hybrid kernel
        np.testing.assert_allclose(hits[0]["scale"], np.broadcast_to(ic.scale, ic.codes.shape[-1:]), rtol=1e-6)
    runner = LiteRTStreamingModel(path)
    names = runner.state_names
    assert [n.rsplit("_", 1)[-1] for n in names[-3:]] == ["h", "c", "step"]
    assert [runner.state_dtypes[n] for n in names] == [np.int8] * (len(names) - 3) + [np.float32] * 3
    # the memory projection counts what the file keeps (plus the step count)
    assert sum(v.nbytes for v in runner.initial_state().values()) == streaming_state_bytes(model) + 4
    hops = rng.normal(size=(100, runner.hop, runner.n_mels)).astype("float32")
    lite, ref = runner.run(hops), keras_stream_logits(model, hops)
    err = np.abs(lite - ref) / runner.output_grid[0]
    assert np.mean(err <= 1.0) >= 0.95 and np.mean(lite.argmax(1) == ref.argmax(1)) >= 0.95, \
        (np.mean(err <= 1.0), err.max())
    state = runner.initial_state()
    for frames in hops[:37]:
        _, state = runner.step(frames, state)
    rest = [LiteRTStreamingModel(path).step(frames, state) for frames in hops[37:38]]
    np.testing.assert_array_equal(rest[0][0], lite[37])
    check = check_streaming(model, path, x)  # a window streamed from its first frame: the window model's logits
    np.testing.assert_allclose(check["keras_last"], model(x, training=False).numpy(), atol=1e-4)
    assert check["within_one_step"] >= 0.95 and check["argmax_agreement"] >= 0.9, check["within_one_step"]
    # the training run's deployment step: INT4 (the LSTM's hybrid projections stay int8), split front end, payload
    x, y = data(rng, 24)
    out = export_for_deployment(model, str(tmp_path / "dep"), data(rng, 64)[0], x, y, pack_presets=("nna-5bit",))
    assert out["form"] == "streaming" and out["within_one_step"] >= 0.95 and out["core_within_one_step"] >= 0.95
    assert out["window_bytes"] is None and "QuantLSTM" in out["window_skipped"]
    types = {tuple(d["weights"].shape): d["weight_type"]
             for d in T.read_linear_ops(tmp_path / "dep" / "stream_int4.tflite")}
    assert types[weights["kernel"].codes.shape[::-1]] == "INT8" and "INT4" in types.values()
    assert out["int4_within_one_step"] >= 0.95 and out["packed_bytes"]["nna-5bit"] > 0
    with pytest.raises(T.UnsupportedModelError, match=r"layer 'lstm' \(QuantLSTM\) reads the window from a zero "
                                                      r"state.*use to_tflite_streaming"):
        T.to_tflite_window(model, tmp_path / "w.tflite", x)


def test_deployment_exports_the_streaming_form(exported, tmp_path, rng):
    model = exported["model"]
    x, y = data(rng, 24)
    from kws_quant.export.front_end import load_front_end
    from kws_quant.features import FeatureConfig

    out = export_for_deployment(model, str(tmp_path), data(rng, 64)[0], x, y, pack_presets=("nna-5bit",),
                                features=FeatureConfig(n_mels=8))
    assert out["form"] == "streaming" and (tmp_path / "stream_int8.tflite").is_file()
    assert (tmp_path / "stream_int8.stream.json").is_file() and (tmp_path / "window_int8.tflite").is_file()
    assert (tmp_path / "stream_core.front_end.json").is_file() and out["core_bytes"] < out["int8_bytes"]
    features = load_front_end(tmp_path / "stream_core.front_end.json").features  # what a device computes frames with
    assert features["n_mels"] == 8 and features["sample_rate"] == 16000 and features["hop_ms"] == 10.0
    assert out["int4_bytes"] < out["int8_bytes"] and out["int4_within_one_step"] >= 0.9
    assert out["within_one_step"] >= 0.9 and out["window_within_one_step"] >= 0.9 and out["core_within_one_step"] >= 0.9
    assert out["int8_vs_float32"] > 1 and out["packed_bytes"]["nna-5bit"] > 0  # a tiny model: mostly metadata
    assert abs(out["int8_test_accuracy"] - out["keras_test_accuracy"]) <= 0.15


def test_stateful_litert_runner_scores_a_stream_like_the_keras_runner(exported, rng):
    from kws_quant.export.litert_stream import LiteRTStatefulRunner
    from kws_quant.models.stream_state import StatefulStreamingRunner

    feats = rng.normal(size=(150, 8)).astype("float32")
    lite = LiteRTStatefulRunner(exported["path"])
    keras_runner = StatefulStreamingRunner(exported["model"], block_steps=16, jit_compile=False)
    a, b = lite.posteriors(feats), keras_runner.posteriors(feats)
    assert a.shape == b.shape and (lite.window, lite.hop) == (keras_runner.window, keras_runner.hop)
    assert lite.mode == "stateful"  # what eval.report's streaming DET table says about it
    np.testing.assert_array_equal(lite.end_frames(len(a)), keras_runner.end_frames(len(b)))
    assert np.mean(np.abs(a - b) < 0.05) >= 0.95 and np.mean(a.argmax(1) == b.argmax(1)) >= 0.9


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_streaming_export_matches_keras_on_real_speech_features(arch, tmp_path):
    """Ranges and batch-norm statistics set on real log-mel windows (eSpeak NG speech), exported, and each other
    real window streamed hop by hop through LiteRT and Keras (measured: 99.2 % / 99.8 % of the logits of all steps
    within one output step for DS-CNN / TC-ResNet, the worst 1.4 / 1.2 steps)."""
    from test_export_tflite import speech_windows

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    windows = speech_windows("espeak", rng)
    calib, test = windows[::2], windows[1::2]
    model = small_model(arch, "tanh4", window=98, n_mels=40, classes=12, seed=1)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    model.fit(np.concatenate([calib] * 8), rng.integers(0, 12, 8 * len(calib)), epochs=1, batch_size=16, verbose=0)
    path = T.to_tflite_streaming(model, tmp_path / f"{arch}.tflite", calib)
    check = check_streaming(model, path, test)
    assert check["within_one_step"] >= 0.95 and check["argmax_agreement"] >= 0.9, check["within_one_step"]


def test_export_cli_streaming(exported, tmp_path, rng):
    from kws_quant.export.__main__ import UsageError, run

    model_path, rep = tmp_path / "m.keras", tmp_path / "w.npy"
    exported["model"].save(model_path)
    np.save(rep, data(rng, 32)[0])
    path = run(["x", f"--model={model_path}", f"--out={tmp_path / 'out' / 's.tflite'}", "--streaming",
                f"--representative={rep}"])
    assert LiteRTStreamingModel(path).state_names and (tmp_path / "out" / "s.stream.json").is_file()
    core = run(["x", f"--model={model_path}", f"--out={tmp_path / 'out' / 'c.tflite'}", "--streaming",
                f"--representative={rep}", "--split_front_end", "--int4"])
    assert LiteRTStreamingModel(core).frames_dtype == np.int8 and (tmp_path / "out" / "c.front_end.json").is_file()
    assert "INT4" in {d["weight_type"] for d in T.read_linear_ops(core)}
    with pytest.raises(UsageError, match="--streaming needs --representative"):
        run(["x", f"--model={model_path}", f"--out={tmp_path / 's.tflite'}", "--streaming"])
    with pytest.raises(UsageError, match="--streaming does not take --fold_pooling"):
        run(["x", f"--model={model_path}", f"--out={tmp_path / 's.tflite'}", "--streaming", "--fold_pooling"])


def test_split_front_end_streaming_export_has_int8_frames_and_no_float_op(exported, tmp_path, rng):
    """``split_front_end=True``: the per-mel ``bn_in`` moves to ``<name>.front_end.json``; the model takes the input
    quantizer's int8 codes, holds no float op, and streams the logits of the unsplit export (the same integer
    kernels after the same codes; the normalisation rounds once, in NumPy float32 instead of LiteRT's)."""
    from kws_quant.export.front_end import front_end_path, load_front_end
    from kws_quant.export.tflite import flatbuffer

    model = exported["model"]  # its own generator: the module fixture's is shared in test order
    calibration = data(rng, 96)[0]
    path = T.to_tflite_streaming(model, tmp_path / "core.tflite", calibration, split_front_end=True)
    front = load_front_end(front_end_path(path))
    assert [s["layer"] for s in front.steps] == ["bn_in"] and front.scale is not None
    unsplit_path = T.to_tflite_streaming(model, tmp_path / "whole.tflite", calibration)
    runner, unsplit = LiteRTStreamingModel(path), LiteRTStreamingModel(unsplit_path)
    assert runner.frames_dtype == np.int8 and unsplit.frames_dtype == np.float32
    m = flatbuffer.load_object(path)
    ops = {flatbuffer.op_name(m, op) for op in m.subgraphs[0].operators}
    assert not ops & {"QUANTIZE", "DEQUANTIZE", "MUL"}, ops  # the unsplit file normalises and quantizes in float
    assert json.load(open(str(path)[:-len(".tflite")] + ".stream.json"))["front_end"] == "core.front_end.json"
    hops = rng.normal(size=(60, runner.hop, runner.n_mels)).astype("float32")
    lite, ref = runner.run(hops), unsplit.run(hops)
    err = np.abs(lite - ref) / runner.output_grid[0]
    assert runner.output_grid == unsplit.output_grid
    assert np.mean(err == 0) >= 0.95 and err.max() <= 2.0, (np.mean(err == 0), err.max())
    # an unsplit export written over it removes the stale front end, which would otherwise be applied twice
    T.to_tflite_streaming(model, path, calibration)
    assert not os.path.exists(front_end_path(path)) and LiteRTStreamingModel(path).frames_dtype == np.float32


@pytest.mark.litert_bitexact
def test_int4_streaming_export_packs_the_4bit_kernels_and_computes_the_int8_files_logits(exported, tmp_path, rng):
    """``int4=True``: every 4-bit kernel (dense, conv, depthwise) is an INT4 tensor holding the same codes; without
    XNNPACK (which delegates only the int8 file's ops) LiteRT's kernels unpack them to the same int8 codes, so the
    logits and states equal the int8 file's bit for bit (integer arithmetic on both sides)."""
    model = exported["model"]
    calibration = data(rng, 96)[0]
    int8 = T.to_tflite_streaming(model, tmp_path / "s8.tflite", calibration)
    int4 = T.to_tflite_streaming(model, tmp_path / "s4.tflite", calibration, int4=True)
    plain, small = T.read_linear_ops(int8), T.read_linear_ops(int4)
    assert [d["weight_type"] for d in small].count("INT4") == len(small) - 1  # all but the pooling's 1/T weights
    for a, b in zip(plain, small):
        np.testing.assert_array_equal(a["weights"], b["weights"])
    assert os.path.getsize(int4) < os.path.getsize(int8)
    hops = rng.normal(size=(40, *LiteRTStreamingModel(int8).frames_shape[1:])).astype("float32")
    a, b = LiteRTStreamingModel(int8, xnnpack=False), LiteRTStreamingModel(int4, xnnpack=False)
    np.testing.assert_array_equal(a.run(hops), b.run(hops))
    check = check_streaming(model, int4, data(rng, 16)[0])  # with XNNPACK, as deployed: against Keras
    assert check["within_one_step"] >= 0.88 and check["argmax_agreement"] >= 0.9
