"""The streaming model zoo (DS-CNN, TC-ResNet, CRNN) and true streaming with state (kws_quant.models.stream_state)."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kws_quant import qat
from kws_quant.models import KWSModelConfig, StreamingRunner, build_kws_model
from kws_quant.models.compute import layer_macs, macs_per_second, window_macs
from kws_quant.models.stream_state import NotStreamableError, StatefulStreamingRunner, to_streaming
from kws_quant.models.zoo import ZOO_ARCHS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"dscnn": dict(hidden=(16, 16, 16), kernel_size=5), "tcresnet": dict(hidden=(16, 16, 24)),
         "crnn": dict(hidden=(16, 16, 16))}


def small_model(arch, recipe="float", window=40, n_mels=8, classes=4, seed=0, **over):
    keras.utils.set_random_seed(seed)
    cfg = KWSModelConfig(arch=arch, window_frames=window, n_mels=n_mels, dropout=0.0, **{**SMALL[arch], **over})
    return build_kws_model(cfg, classes, recipe)


def settle(model, seed=0):
    """A few training steps: batch-norm statistics and quantizer ranges move away from their initial values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], 64)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return model


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_default_zoo_models_are_near_250k_parameters_and_much_cheaper_streaming(arch):
    model = build_kws_model(KWSModelConfig(arch=arch), 12)
    assert 150_000 <= model.count_params() <= 250_000
    stream = to_streaming(model)
    window_per_s = macs_per_second(model, hop_frames=2)  # the window model re-run every 20 ms
    assert window_per_s / stream.macs_per_second() >= 5.0  # the compute target, counted
    assert stream.hop == 2 and stream.state_bytes() > 0


def test_macs_count_by_hand():
    model = small_model("tcresnet")
    # dense_in: 3 taps x 8 mels x 16 filters at (40 - 3) // 2 + 1 = 19 output frames
    dense_in = model.get_layer("dense_in")
    assert layer_macs(dense_in, dense_in.output.shape) == 19 * 3 * 8 * 16
    assert layer_macs(model.get_layer("bn_0"), (None, 19, 16)) == 0
    assert window_macs(model) > layer_macs(dense_in, dense_in.output.shape)
    stream = to_streaming(model)
    per_step = stream.macs_per_step()  # each conv computes one output frame per step, dense_out once
    expected = sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel"))
    assert per_step == expected


@pytest.mark.parametrize("recipe", ["float", "tanh8", "tanh4", "tanh1", "linear8"])
@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_streaming_with_state_equals_the_window_model(arch, recipe):
    model = settle(small_model(arch, recipe))
    feats = np.random.default_rng(1).normal(size=(150, 8)).astype("float32")
    # several blocks carry the state; XLA on the float models (the runner's default), off for the rest (compile time)
    stateful = StatefulStreamingRunner(model, block_steps=16, jit_compile=recipe == "float").posteriors(feats)
    window = StreamingRunner(model, hop_frames=2).posteriors(feats)
    assert stateful.shape == window.shape
    # the CRNN's LSTM keeps its state across windows (that is what streaming it means): only the first window, read
    # from the stream's first frame, is the window model's; the convolutional models equal it at every hop
    a, b = (stateful, window) if arch != "crnn" else (stateful[:1], window[:1])
    diff = np.abs(a - b)
    if recipe == "float":
        assert diff.max() < 1e-4
    else:  # two float paths may round an activation code differently on rare ties: almost all equal
        assert np.mean(diff < 1e-4) >= 0.98 and diff.max() < 0.1


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_step_api_explicit_state_and_first_valid_step(arch):
    model = settle(small_model(arch))
    stream = to_streaming(model)
    window = np.random.default_rng(2).normal(size=(1, 40, 8)).astype("float32")
    expected = model(window, training=False).numpy()
    state = stream.initial_state(1)
    assert len(state) == len(stream.state_shapes)
    for k in range(40 // stream.hop):
        logits, state = stream.step(window[:, k * stream.hop:(k + 1) * stream.hop], state)
    assert k == stream.first_valid_step
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)
    assert int(state[-1]) == 40 // stream.hop  # the step counter
    for s, shape in zip(state[:-1], stream.state_shapes[:-1]):
        assert tuple(s.shape) == (1, *shape)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_zoo_model_trains_through_two_stage_qat_and_reloads_in_a_fresh_process(arch, tmp_path):
    model = small_model(arch, "tanh4")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 40, 8)).astype("float32")
    y = (x[:, :, 0].mean(1) > 0).astype("int32") + 2 * (x[:, :, 1].mean(1) > 0)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    stages = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stages.append(qat.get_stage(self.model))

    model.fit(x, y, batch_size=16, epochs=3, verbose=0,
              callbacks=[qat.TwoStageQAT(stage1_at=0, stage2_at=2, verbose=False), Record()])
    assert stages == [1, 1, 2]
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x[:8])
    code = ("import sys, numpy as np, keras, kws_quant; "
            "from kws_quant.models.stream_state import StatefulStreamingRunner; "
            f"m = keras.saving.load_model(r'{path}'); x = np.load(r'{tmp_path / 'x.npy'}'); "
            f"np.save(r'{tmp_path / 'y.npy'}', m(x, training=False).numpy()); "
            "StatefulStreamingRunner(m).posteriors(x[0]); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x[:8], training=False).numpy(), atol=1e-4)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="arch='resnet50' is not allowed.*'dscnn', 'tcresnet', 'crnn'"):
        KWSModelConfig(arch="resnet50")
    with pytest.raises(ValueError, match="window_frames=30 is shorter than the model's receptive field of 79"):
        KWSModelConfig(arch="dscnn", window_frames=30)
    with pytest.raises(ValueError, match="recipe pattern 'dw_\\*' matches no layer"):
        small_model("tcresnet", {"kernel": "tanh(bits=4)", "layers": {"dw_*": {"kernel": "tanh(bits=8)"}}})
    with pytest.raises(ValueError, match="needs at least 2 widths"):
        KWSModelConfig(arch="crnn", hidden=(32,))
    # the paper's DNN flattens the window: no frame-by-frame form, and the error says what to use instead
    with pytest.raises(NotStreamableError, match="'pool' \\(AveragePooling1D\\).*StreamingRunner"):
        to_streaming(build_kws_model(KWSModelConfig(window_frames=20, n_mels=8, hidden=(16,)), 3))
    with pytest.raises(ValueError, match="hop_frames=3: .* steps 2 frames"):
        StatefulStreamingRunner(small_model("dscnn"), hop_frames=3)


def test_same_padding_and_strided_inner_convs_are_not_streamable():
    inp = keras.Input((20, 4))
    from kws_quant.layers import QuantConv1D
    x = QuantConv1D(4, 3, strides=2, name="stem")(inp)
    x = QuantConv1D(4, 3, padding="same", name="c_same")(x)
    out = keras.layers.GlobalAveragePooling1D()(x)
    with pytest.raises(NotStreamableError, match="'c_same'.*padding='same'"):
        to_streaming(keras.Model(inp, out))
    x = QuantConv1D(4, 3, strides=2, name="stem2")(inp)
    x = QuantConv1D(4, 3, strides=2, name="inner")(x)
    with pytest.raises(NotStreamableError, match="'inner'.*only the first convolution may stride"):
        to_streaming(keras.Model(inp, keras.layers.GlobalAveragePooling1D()(x)))


def test_experiment_checks_the_model_config_before_reading_data():
    from kws_quant.config_defaults import kws_config
    from kws_quant.experiments.kws import check_config, model_config

    cfg = kws_config().to_dict()
    cfg["model"]["arch"] = "tcresnet"
    assert model_config(cfg, 98, 40).hidden == (64, 72, 96, 128)  # () = the arch's default widths
    cfg["data"]["clip_seconds"] = 0.3
    with pytest.raises(ValueError, match="config.model: .*window_frames=28 is shorter"):
        check_config(cfg)


def test_layers_moved_from_asr_ext_still_load_by_their_old_names():
    from kws_quant.layers import QuantDepthwiseConv1D, QuantLSTM

    assert keras.saving.get_registered_object("asr_ext>QuantLSTM") is QuantLSTM
    assert keras.saving.get_registered_object("asr_ext>QuantDepthwiseConv1D") is QuantDepthwiseConv1D


def test_stream_scorer_runs_zoo_models_with_state_and_the_dnn_on_a_window():
    from eval.kws_streams import streaming_runner

    zoo = small_model("tcresnet")
    assert streaming_runner(zoo, hop_frames=2).mode == "stateful"
    assert streaming_runner(zoo, hop_frames=4).mode == "window"  # another hop than the model's: re-run windows
    dnn = build_kws_model(KWSModelConfig(window_frames=40, n_mels=8, hidden=(16,)), 4)
    assert streaming_runner(dnn, hop_frames=2).mode == "window"


def test_memory_projection_counts_the_streaming_state():
    from eval.memory import project_memory, streaming_state_bytes

    model = small_model("tcresnet", "tanh4")
    stream = to_streaming(model)
    values = sum(int(np.prod(s)) for s in stream.state_shapes[:-1])
    assert streaming_state_bytes(model) == values  # 8-bit activations: one byte per buffered value
    assert streaming_state_bytes(small_model("tcresnet")) == 4 * values  # float: 32 bits
    assert project_memory(model, "arm-neon").attrs["summary"]["streaming_state_bytes"] == values
    dnn = build_kws_model(KWSModelConfig(window_frames=40, n_mels=8, hidden=(16,)), 4, "tanh4")
    assert streaming_state_bytes(dnn) is None
    crnn = small_model("crnn", "tanh4")  # the LSTM's h and c stay float32 (QuantLSTM and its LiteRT export)
    shapes = to_streaming(crnn).state_shapes[:-1]
    units = crnn.get_layer("lstm").units
    assert streaming_state_bytes(crnn) == sum(int(np.prod(s)) for s in shapes) - 2 * units + 2 * 4 * units


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_nna_packed_export_holds_the_quantizers_codes_and_its_projected_size(arch, tmp_path):
    from eval.memory import project_memory
    from kws_quant.export.packing import pack, unpack

    model = settle(small_model(arch, "tanh4"))
    manifest = pack(model, str(tmp_path), preset="nna-5bit")
    restored = unpack(str(tmp_path))["layers"]
    checked = 0
    for layer in model.layers:
        if not hasattr(layer, "quantized_weights"):
            continue
        for role, want in layer.quantized_weights().items():
            if role.endswith("kernel"):  # batch-norm folds into the scales; the integer codes stay the quantizer's
                np.testing.assert_array_equal(restored[layer.name][role]["codes"].codes, want.codes)
                checked += 1
    assert checked >= 4
    assert manifest["payload_nbytes"] == project_memory(model, "nna-5bit").attrs["summary"]["param_bytes"]


def test_streaming_runner_can_be_forced_to_the_sliding_window():
    from eval.kws_streams import streaming_runner

    assert streaming_runner(small_model("crnn"), hop_frames=2, streaming="window").mode == "window"
    with pytest.raises(ValueError, match="streaming='state' is not allowed"):
        streaming_runner(small_model("crnn"), hop_frames=2, streaming="state")
