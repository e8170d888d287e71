"""Memory projections (METHODS §11): hand-computed sizes per preset, bits read from the model, bad inputs."""
import keras
import numpy as np
import pytest

import kws_quant  # noqa: F401  (sets the Keras backend)
from eval.memory import project_memory, summary_table, to_markdown
from kws_quant.layers import QuantActivation, QuantBatchNormalization, QuantDense
from kws_quant.models import KWSModelConfig, build_kws_model

K4 = "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')"
K1 = "tanh(bits=1)"  # dorefa, per tensor: scale () and zero point () stored


def two_dense(k1=K4, k2=K1, b="linear(bits=8)", act="linear(bits=8)", inp="linear(bits=8)"):
    """in_q → d1 (6→4, bias) → relu act → d2 (4→3, bias). d1: 24+4 values, d2: 12+3."""
    keras.utils.set_random_seed(0)
    x0 = keras.Input((6,))
    x = QuantActivation(quantizer=inp, name="in_q")(x0)
    x = QuantDense(4, kernel_quantizer=k1, bias_quantizer=b, name="d1")(x)
    x = QuantActivation("relu", quantizer=act, name="act")(x)
    return keras.Model(x0, QuantDense(3, kernel_quantizer=k2, bias_quantizer=b, name="d2")(x))


def rows(df):
    return df.set_index("layer")


# Hand computation, 32-bit words: ceil(count·bits/32)·4 bytes per segment.
#   d1 kernel 24 values, scale (4,) = 16 B; bias 4 values, scale () = 4 B.
#   d2 kernel 12 values, scale () = 4 B, zero point () = 4 B (dorefa is unsigned); bias 3 values, scale 4 B.
HAND = {
    # preset: (d1 kernel B, d1 bias B, d2 kernel B, d2 bias B, d1 kernel width, d2 kernel width)
    "arm-neon": (24, 4, 12, 4, 8, 8),           # 24·8=192 b=6 words; 4·8=32 b; 12·8=96 b; 3·8=24 b → 1 word
    "arm-neon+packed": (12, 4, 4, 4, 4, 1),     # 24·4=96 b=3 words; 12·1=12 b → 1 word
    "nna-5bit": (16, 16, 8, 12, 5, 5),          # 24·5=120 b → 4 words; bias 4·32; 12·5=60 b → 2 words; 3·32
    "nna-1bit": (24, 16, 4, 12, 8, 1),          # 4-bit kernel → width 8 (smallest of 1, 8 that holds 4 bits)
}


@pytest.mark.parametrize("preset", list(HAND))
def test_two_dense_projection_equals_hand_computation(preset):
    name, _, flag = preset.partition("+")
    df = project_memory(two_dense(), name, packed=True if flag else None)
    k1, b1, k2, b2, w1, w2 = HAND[preset]
    r = rows(df)
    assert r.loc["d1", ["weight_bytes", "bias_bytes", "scale_bytes"]].tolist() == [k1, b1, 16 + 4]
    assert r.loc["d2", ["weight_bytes", "bias_bytes", "scale_bytes"]].tolist() == [k2, b2, 4 + 4 + 4]
    assert r.loc["d1", ["model_bits", "weight_bits"]].tolist() == [4, w1]
    assert r.loc["d2", ["model_bits", "weight_bits"]].tolist() == [1, w2]
    total = k1 + b1 + 20 + k2 + b2 + 12
    assert r.loc["TOTAL", "param_bytes"] == total == df.attrs["summary"]["param_bytes"]
    assert r.loc["TOTAL", "params"] == 43
    assert r.loc["TOTAL", "vs_float32"] == pytest.approx(43 * 4 / total)
    assert r.loc["TOTAL", "vs_int8"] == pytest.approx(43 / total)
    # Activations (bytes, 32-bit words): in_q is the front end, per frame: 6 float32 in → 24, 6·8 b out → 8;
    # d1 8 in + 4·32 b out; act 16 in + 4 out; d2 4 in + 3·32 b out. Streaming buffer: the 6 inputs at 8 bits → 8.
    assert r["activation_bytes"].tolist()[:4] == [32, 24, 20, 16]
    s = df.attrs["summary"]
    assert (s["peak_activation_bytes"], s["peak_activation_layer"], s["stream_buffer_bytes"]) == (32, "in_q", 8)
    assert s["total_bytes"] == total + 32 + 8


def test_word_bits_rounds_each_segment_to_whole_words():
    df = project_memory(two_dense(), "nna-5bit", word_bits=64)
    r = rows(df)
    # d1: kernel 120 b → 2 words = 16; scale 16; bias 128 b → 16; bias scale 4 → 8.
    # d2: kernel 60 b → 8; scale 8 + zero point 8; bias 96 b → 16; bias scale 8.
    assert r.loc["d1", "param_bytes"] == 16 + 16 + 16 + 8
    assert r.loc["d2", "param_bytes"] == 8 + 16 + 16 + 8
    assert project_memory(two_dense(), "nna-5bit", word_bits=8).loc[1, "weight_bytes"] == 15  # 120 bits


def test_bits_are_read_from_the_models_quantizers():
    model = two_dense()
    before = rows(project_memory(model, "arm-neon", packed=True))
    model.get_layer("d1").quantizers["kernel"].bits = 2  # the quantizer object the layer uses
    after = rows(project_memory(model, "arm-neon", packed=True))
    assert (before.loc["d1", "weight_bytes"], after.loc["d1", "weight_bytes"]) == (12, 8)  # 96 b vs 48 b
    assert after.loc["d1", "model_bits"] == 2
    model.get_layer("act").quantizers["output"].bits = 4
    assert rows(project_memory(model, "arm-neon")).loc["act", "activation_bytes"] == 16 + 4  # 4·4 b → 1 word


def test_batch_norm_is_folded_into_the_preceding_dense():
    keras.utils.set_random_seed(0)
    x0 = keras.Input((6,))
    x = QuantDense(4, use_bias=False, kernel_quantizer=K4, name="d")(x0)
    x = QuantBatchNormalization(gain_quantizer="linear(bits=8, per_channel=True)",
                                offset_quantizer="linear(bits=8)", name="bn")(x)
    df = rows(project_memory(keras.Model(x0, x), "nna-5bit"))
    # kernel 24·5 b → 16 B; scale·gain per channel 16 B; bias = the offset: 4 values in int32 words + scale 4 B.
    assert df.loc["d", ["weight_bytes", "bias_bytes", "scale_bytes", "params"]].tolist() == [16, 16, 20, 28]
    assert df.loc["bn", ["param_bytes", "activation_bytes", "note"]].tolist() == [0, 0, "folded into d"]
    assert df.loc["d", "activation_bytes"] == 24 + 16  # 6 float inputs, 4 float outputs of the batch-norm


def test_float_model_counts_32_bits_and_says_so():
    with pytest.warns(UserWarning, match="no quantized layers"):
        df = project_memory(two_dense(None, None, None, None, None), "nna-1bit")
    total = rows(df).loc["TOTAL"]
    assert total["param_bytes"] == total["float32_bytes"] == 43 * 4
    assert total["vs_float32"] == 1.0 and total["vs_int8"] == 0.25
    assert df.attrs["summary"]["notes"] == ["the model has no quantized layers: every tensor is counted as float32 "
                                            "(32 bits)"]
    assert "Note: the model has no quantized layers" in to_markdown(df)


def test_partly_float_model_notes_float_kernels():
    df = project_memory(two_dense(k2=None), "nna-5bit")
    assert rows(df).loc["d2", ["weight_bits", "weight_bytes", "scale_bytes"]].tolist() == [32, 48, 4]
    assert df.attrs["summary"]["notes"] == ["float kernels counted at 32 bits: d2"]


def test_kws_model_4bit_weights_and_markdown():
    model = build_kws_model(KWSModelConfig(), 12, "tanh4")
    df = project_memory(model, "arm-neon", packed=True)
    r = rows(df)
    assert r.loc["dense_1", ["model_bits", "weight_bits", "weight_bytes"]].tolist() == [4, 4, 112 * 112 // 2]
    assert r.loc["dense_in", "weight_bits"] == 4  # tanh4 quantizes every kernel at 4 bits
    edge = rows(project_memory(build_kws_model(KWSModelConfig(), 12, "tanh4-edge8"), "arm-neon", packed=True))
    assert edge.loc["dense_in", "weight_bits"] == 8 and edge.loc["dense_out", "weight_bits"] == 8
    assert df.attrs["summary"]["stream_buffer_bytes"] == 98 * 40  # window_frames × n_mels at 8 bits
    # bn_in (CMVN) runs per frame in the front end: one float32 frame in and out, not a whole window
    assert r.loc["bn_in", "activation_bytes"] == 2 * 40 * 4 and r.loc["bn_in", "note"] == "front end, per frame"
    assert r.loc["input_quant", "activation_bytes"] == 40 * 4 + 40  # float frame in, 8-bit frame out
    md = to_markdown(df, ["layer", "params", "param_bytes"])
    assert md.splitlines()[0] == "| layer | params | param_bytes |"
    # stored values: kernels + output bias + bn_in's gain and offset over 40 mel bins + one folded bias per hidden
    # block (a BN after a dense folds: its gain joins the per-channel scale, its offset becomes the bias)
    stored = 49 * 40 * 112 + 2 * 112 * 112 + 112 * 12 + 12 + 2 * 40 + 3 * 112
    assert f"| TOTAL | {stored} |" in md
    table = summary_table({("tanh4", "arm-neon+packed"): df})
    assert table.loc[0, "param_bytes"] == r.loc["TOTAL", "param_bytes"]


def _words(count, bits, word_bits=32):
    """Bytes of one segment: ``count`` values of ``bits`` in whole ``word_bits`` words."""
    return -(-count * bits // word_bits) * word_bits // 8


@pytest.mark.parametrize("recipe, preset, kernel_width, zero_points, documented", [
    ("tanh4", "nna-5bit", 5, False, 156728),   # docs/memory.md, "Numbers for the 250K KWS model"
    ("tanh4", "arm-neon+packed", 4, False, 124820),
    ("tanh1", "nna-1bit", 1, True, 35144),     # dorefa 1-bit: unsigned grid, a zero point per channel
])
def test_kws_model_totals_are_the_documented_hand_computation(recipe, preset, kernel_width, zero_points,
                                                              documented):
    """The 250K model's weight storage, layer by layer from its shapes (the numbers docs/memory.md publishes)."""
    name, packed = preset.split("+")[0], preset.endswith("+packed")
    df = project_memory(build_kws_model(KWSModelConfig(), 12, recipe), name, packed=packed or None)
    bias_bits = 8 if name == "arm-neon" else 32            # NNA presets: int32 accumulator words
    expected = _words(40, 8) + _words(40, bias_bits) + 2 * 4  # bn_in: 8-bit gain, 8-bit offset (bias width), scales
    for fan_in, units in ((49 * 40, 112), (112, 112), (112, 112), (112, 12)):
        per_channel = units * 4 * (2 if zero_points else 1)  # float32 scale (and zero point) per output channel
        expected += _words(fan_in * units, kernel_width) + per_channel + _words(units, bias_bits) + 4
    total = int(df.iloc[-1]["param_bytes"])
    assert total == expected == documented, (total, expected, documented)


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="nna-3bit"), "unknown memory preset 'nna-3bit'; presets: arm-neon, nna-1bit, nna-5bit"),
    (dict(preset="nna-5bit", word_bits=12), "word_bits=12 is not allowed; allowed: 8, 16, 32, 64"),
    (dict(preset={"kernel_bits": (2,)}), "layer 'd1' kernel: the model's quantizer has 4 bits, more than preset "
                                         "'custom' stores \\(kernel_bits=\\(2,\\)\\)"),
    (dict(preset={"bias_bits": 4}), "layer 'd1' bias: the model's quantizer has 8 bits, more than preset"),
    (dict(preset={"kernel_bits": 9}), "kernel_bits=9 is not allowed; allowed: None or integers 1..8"),
    (dict(preset={"words": 32}), "memory preset has unknown field\\(s\\) \\['words'\\]"),
    (dict(preset=5), "cannot interpret 5 as a memory preset"),
    (dict(preset="arm-neon", packed="yes"), "packed='yes' is not allowed"),
])
def test_bad_inputs_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        project_memory(two_dense(), **kwargs)


def test_unsupported_models_raise():
    inner = two_dense()
    x0 = keras.Input((6,))
    with pytest.raises(ValueError, match="layer 'functional.*' is a nested model"):
        project_memory(keras.Model(x0, inner(x0)))
    x0 = keras.Input((None, 4))
    model = keras.Model(x0, QuantDense(2, kernel_quantizer=K4, name="d")(x0))
    with pytest.raises(ValueError, match=r"layer 'd' input has shape \(None, 4\) with an unknown dimension"):
        project_memory(model)
    assert np.isnan(rows(project_memory(two_dense())).loc["act", "vs_int8"])  # no parameters: no ratio


def test_preset_fallback_is_said_not_silent():
    """A 4-bit model on nna-1bit keeps its 4-bit kernels in 8-bit words: the projection and the report row say
    which, instead of a bare 3.96x."""
    from eval.report import memory_row
    from kws_quant.models import KWSModelConfig, build_kws_model

    cfg = KWSModelConfig(window_frames=20, n_mels=8, hidden=(16, 16))
    tanh4, tanh1 = build_kws_model(cfg, 3, "tanh4"), build_kws_model(cfg, 3, "tanh1")
    s = project_memory(tanh4, "nna-1bit").attrs["summary"]
    assert s["widened_kernels"] == {f"{n}/kernel": "4->8" for n in ("dense_in", "dense_1", "dense_out")}
    assert any("4-bit kernels stored in 8-bit words, not the preset's native 1 bits: dense_in, dense_1, dense_out"
               in n for n in s["notes"])
    assert memory_row("tanh4", tanh4, "nna-1bit", None)["fallback"] == "3 kernels in 8-bit words (native 1)"
    tanh8 = build_kws_model(cfg, 3, "tanh8")
    assert memory_row("tanh8", tanh8, "nna-5bit", None)["fallback"] == "3 kernels in 8-bit words (native 5)"
    for model, preset in ((tanh4, "nna-5bit"), (tanh4, "arm-neon"), (tanh1, "nna-1bit")):
        assert project_memory(model, preset).attrs["summary"]["widened_kernels"] == {}
        assert memory_row("m", model, preset, None)["fallback"] == ""
