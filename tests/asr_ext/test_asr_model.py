"""RNN-T model: QuantLSTM against Keras' LSTM, quantizer placement by recipe, masking, save/load, QAT stages."""
import keras
import numpy as np
import pytest

import asr_ext  # noqa: F401
from asr_ext.models import QuantDepthwiseConv1D, QuantLSTM, RNNTConfig, build_rnnt, encoder_lengths
from kws_quant import qat
from kws_quant.layers import QuantActivation, QuantBatchNormalization, QuantConv1D, QuantDense, quant_layers
from kws_quant.experiments.training import transfer_weights

TANH4 = "tanh(bits=4, mode='symmetric', per_channel=True, output_scale='max')"
TINY = dict(lstm_units=(24, 24), pred_units=(16,), joint_units=20, embed_dim=8, conformer_dim=16,
            conformer_blocks=1, conformer_heads=2, conformer_kernel=5, n_mels=12, dropout=0.0)


def batch(rng, b=3, t=29, u=5, n_mels=12, lengths=(29, 17, 6), v=29):
    return {"features": rng.standard_normal((b, t, n_mels)).astype("float32"),
            "feature_lengths": np.array(lengths, "int32"),
            "labels": rng.integers(1, v, (b, u)).astype("int32")}


# -- QuantLSTM -------------------------------------------------------------------------------------------------------
def test_quant_lstm_equals_keras_lstm_without_quantizers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 13, 7)).astype("float32")
    ref = keras.layers.LSTM(9, return_sequences=True, return_state=True)
    ref.build((None, None, 7))
    ref.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5 for w in ref.get_weights()])
    mine = QuantLSTM(9, return_state=True)
    mine.build((None, None, 7))
    mine.set_weights(ref.get_weights())  # same variables, same order and layout
    assert [v.name for v in mine.weights] == ["kernel", "recurrent_kernel", "bias"]
    h0 = [rng.standard_normal((4, 9)).astype("float32") for _ in range(2)]
    for kwargs in ({}, {"initial_state": h0}):
        want, got = ref(x, **kwargs), mine(x, **kwargs)
        for a, b in zip(want, got):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-6)
    # one step at a time equals the sequence
    state, outs = tuple(h0), []
    for t in range(x.shape[1]):
        y, state = mine.step(x[:, t], state)
        outs.append(y.numpy())
    np.testing.assert_allclose(np.stack(outs, 1), mine(x, initial_state=h0)[0].numpy(), atol=2e-6)
    last = QuantLSTM(9, return_sequences=False)
    last.build((None, None, 7))
    last.set_weights(ref.get_weights())
    np.testing.assert_allclose(last(x).numpy(), ref(x)[1].numpy(), atol=2e-6)


def test_quant_lstm_quantizes_both_kernels_and_keeps_roles():
    layer = QuantLSTM(8, kernel_quantizer=TANH4, bias_quantizer="linear(bits=8)", output_quantizer="linear(bits=8)")
    layer.build((None, None, 5))
    assert set(layer.quantizers) == {"kernel", "recurrent_kernel", "bias", "output"}
    assert layer.quantizers["recurrent_kernel"] == layer.quantizers["kernel"]  # inherits the kernel's spec
    assert layer.stage_of("kernel") == layer.stage_of("recurrent_kernel") == 1 and layer.stage_of("bias") == 2
    kernel, recurrent, _ = layer.quantized_parameters()
    for w in (kernel.numpy(), recurrent.numpy()):  # 4-bit symmetric: at most 15 levels per output channel
        assert max(len(np.unique(w[:, c])) for c in range(w.shape[1])) <= 15
    assert set(layer.quantized_weights()) == {"kernel", "recurrent_kernel", "bias"}
    # explicit None keeps the recurrent kernel float; another spec gives it its own precision
    flt = QuantLSTM(8, kernel_quantizer=TANH4, recurrent_kernel_quantizer=None)
    flt.build((None, None, 5))
    assert "recurrent_kernel" not in flt.quantizers
    np.testing.assert_array_equal(flt.quantized_parameters()[1].numpy(), flt.recurrent_kernel.numpy())
    # stateful quantizers get separate state for the recurrent kernel, built as a weight
    gq = QuantLSTM(8, kernel_quantizer="gq(bits=3)", recurrent_kernel_quantizer="linear(bits=6, per_channel=True)")
    gq.build((None, None, 5))
    names = [v.name for v in gq.weights]
    assert "kernel_gq_scale" in names and not any(n.startswith("recurrent_kernel_ema") for n in names)
    both = QuantLSTM(8, kernel_quantizer="gq(bits=3)")
    both.build((None, None, 5))
    assert {"kernel_gq_scale", "recurrent_kernel_gq_scale"} <= {v.name for v in both.weights}
    # serialization keeps "follows the kernel" (no recurrent spec written) and explicit choices
    assert "recurrent_kernel_quantizer" not in layer.get_config()
    assert QuantLSTM.from_config(flt.get_config()).quantizers.keys() == flt.quantizers.keys()


# -- the RNN-T -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["lstm", "conformer"])
def test_rnnt_shapes_lengths_and_padding_invariance(encoder):
    cfg = RNNTConfig(encoder=encoder, **TINY)
    model = build_rnnt(cfg, 29)
    rng = np.random.default_rng(2)
    x = batch(rng)
    logits = model(x).numpy()
    t_enc = encoder_lengths(cfg, x["feature_lengths"])
    assert logits.shape == (3, encoder_lengths(cfg, 29), 6, 29)
    np.testing.assert_array_equal(t_enc, encoder_lengths(cfg, np.array([29, 17, 6])))
    # an utterance's logits do not depend on the padding its batch adds
    alone = {"features": x["features"][1:2, :17], "feature_lengths": x["feature_lengths"][1:2],
             "labels": x["labels"][1:2]}
    np.testing.assert_allclose(model(alone).numpy()[0], logits[1, :t_enc[1]], atol=2e-5)


def test_recipe_puts_quantizers_where_expected():
    for encoder in ("lstm", "conformer"):
        model = build_rnnt(RNNTConfig(encoder=encoder, **TINY), 29, "tanh4")
        layers = quant_layers(model)
        for layer in layers:
            if "kernel" in layer.ROLES:
                assert "kernel" in layer.quantizers, layer.name
            if isinstance(layer, QuantLSTM):
                assert set(layer.quantizers) == {"kernel", "recurrent_kernel", "bias", "output"}
            if isinstance(layer, QuantBatchNormalization):
                assert set(layer.quantizers) == {"gain", "offset"}
        assert model.get_layer("input_quant").quantizers["output"].bits == 8
        assert model.get_layer("joint_act").quantizers["output"].bits == 8
        assert model.get_layer("joint_out").quantizers["kernel"].bits == 4
        kinds = {type(layer) for layer in layers}
        if encoder == "conformer":
            assert {QuantDense, QuantConv1D, QuantDepthwiseConv1D, QuantBatchNormalization} <= kinds
            assert len([n for n in (layer.name for layer in layers) if n.startswith("conf0_att_")]) == 4
        else:
            assert QuantLSTM in kinds and QuantActivation in kinds
    float_model = build_rnnt(RNNTConfig(**TINY), 29, "float")
    assert not any(layer.quantizers for layer in quant_layers(float_model))
    recipe = {"kernel": TANH4, "layers": {"enc_lstm_*": {"kernel": "tanh(bits=8, mode='symmetric')"}}}
    model = build_rnnt(RNNTConfig(**TINY), 29, recipe)
    assert model.get_layer("enc_lstm_1").quantizers["recurrent_kernel"].bits == 8
    assert model.get_layer("pred_lstm_0").quantizers["recurrent_kernel"].bits == 4
    with pytest.raises(ValueError, match="matches no layer"):
        build_rnnt(RNNTConfig(**TINY), 29, {"kernel": TANH4, "layers": {"encoder_lstm*": {"kernel": TANH4}}})


@pytest.mark.parametrize("encoder", ["lstm", "conformer"])
def test_save_load_round_trip(tmp_path, encoder):
    model = build_rnnt(RNNTConfig(encoder=encoder, **TINY), 29, "tanh4")
    x = batch(np.random.default_rng(3))
    model(x, training=True)  # moves the activation ranges away from their initial values
    path = str(tmp_path / "rnnt.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert loaded.get_layer("pred_lstm_0").quantizers == model.get_layer("pred_lstm_0").quantizers


def test_two_stage_qat_switches_quantized_lstm_kernels():
    cfg = RNNTConfig(**TINY)
    x = batch(np.random.default_rng(4))
    float_model = build_rnnt(cfg, 29, "float")
    q_model = build_rnnt(cfg, 29, "tanh4")
    assert transfer_weights(float_model, q_model) > 0
    qat.set_stage(q_model, 0)
    np.testing.assert_allclose(q_model(x).numpy(), float_model(x).numpy(), atol=1e-5)
    qat.set_stage(q_model, 1)
    assert not np.allclose(q_model(x).numpy(), float_model(x).numpy(), atol=1e-3)
    lstm = q_model.get_layer("enc_lstm_0")
    kernel = lstm.quantized_parameters()[0].numpy()
    assert len(np.unique(kernel[:, 0])) <= 15
    qat.set_stage(q_model, 0)
    np.testing.assert_array_equal(lstm.quantized_parameters()[0].numpy(), lstm.kernel.numpy())


def test_conformer_converts_to_native_int():
    from asr_ext.quant import NativeIntDense, to_native_int

    model = build_rnnt(RNNTConfig(encoder="conformer", **TINY), 29)
    native = to_native_int(model, {"conf*": (4, 8)})
    assert isinstance(native.get_layer("conf0_att_q"), NativeIntDense)
    x = batch(np.random.default_rng(5))
    assert native(x).shape == model(x).shape


def test_bad_model_config_errors():
    with pytest.raises(ValueError, match="encoder='gru' is not allowed"):
        RNNTConfig(encoder="gru")
    with pytest.raises(ValueError, match="reduce_after"):
        RNNTConfig(lstm_units=(8,), reduce_after=(3,))
    with pytest.raises(ValueError, match="divisible"):
        RNNTConfig(conformer_dim=30, conformer_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_rnnt(RNNTConfig(**TINY), 1)
    with pytest.raises(ValueError, match="unknown quantization recipe"):
        build_rnnt(RNNTConfig(**TINY), 29, "tanh3")
