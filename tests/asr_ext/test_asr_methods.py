"""QAT methods of the ASR experiment (asr_ext.experiments.methods) on a tiny synthetic RNN-T: every method phase trains without
NaNs, records WER, bits and weight memory, resumes after a kill; bad names, bits and maps give clear errors."""
import math
import shutil
import types

import keras
import numpy as np
import pytest

from asr_ext.experiments import asr as ax
from asr_ext.experiments import methods
from asr_ext.models import RNNTConfig, build_rnnt
from asr_ext.quant import lloyd_max_roles
from kws_quant.export.packing import unpack
from kws_quant.experiments.training import read_history
from wer_reference import corpus_wer_from_tsv

METHODS = ("s8bqat5", "gq_mixed14", "native4_conformer", "nna8")
TINY_MODEL = dict(lstm_units=(24,), reduce_after=(), frame_stack=4, pred_units=(16,), joint_units=16, embed_dim=8,
                  conformer_dim=16, conformer_blocks=1, conformer_heads=2, conformer_ff_mult=2, conformer_kernel=3)


def tiny_config(tmp_path, names=METHODS, stage1_epochs=0) -> dict:
    """30 synthetic utterances (25 train: one batch), no augmentation; float 1 epoch, QAT ``stage1_epochs`` with
    weights quantized then 1 epoch fully quantized."""
    c = ax.asr_config()
    c.data.cache_dir = str(tmp_path.parent / "cache")
    c.data.synthetic.utterances = 30
    c.data.buckets = 1
    c.augment.enabled = False
    c.features.update(dict(sample_rate=8000, n_fft=256, n_mels=20))
    c.model.update(TINY_MODEL)
    c.train.update(dict(float_epochs=1, stage1_epochs=stage1_epochs, stage2_epochs=1))
    c.decode.beam_size = 0
    c.qat.recipes = ()
    c.qat.methods = names
    c.qat.gq.low_bit_layers = ("enc_lstm_0",)
    c.qat.s8bqat.compress_every = 1
    return c.to_dict()


class Killed(Exception):
    pass


class KillAtSecondEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise Killed()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """The tiny run of every method (one fully quantized epoch each)."""
    tmp = tmp_path_factory.mktemp("methods")
    metrics = ax.run(tiny_config(tmp), str(tmp / "run"), verbose=0)
    return types.SimpleNamespace(dir=tmp / "run", metrics=metrics)


@pytest.mark.slow
def test_every_method_trains_and_records_wer_bits_memory(result):
    m = result.metrics
    assert set(m) == {"data", "float", "float_conformer", *METHODS}
    expected_bits = {"s8bqat5": {5}, "native4_conformer": {4}, "nna8": {8}}
    for phase in ("float", "float_conformer", *METHODS):
        p = m[phase]
        assert all(math.isfinite(v) for v in p["history"]["loss"]), (phase, p["history"]["loss"])
        assert len(p["history"]["loss"]) == p["epochs"] == 1
        assert p["test_wer"] == pytest.approx(corpus_wer_from_tsv(result.dir / phase / "test_hypotheses.tsv"))
        assert math.isfinite(p["test_cer"]) and p["test_cer"] >= 0
        assert p["encoder"] == ("conformer" if "conformer" in phase else "lstm")
        mem = p["weight_memory"]
        if phase.startswith("float"):
            assert set(p["weight_bits"].values()) == {32} and mem["packed_bytes"] == mem["float32_bytes"]
            continue
        assert p["stage"] == 2
        assert mem["packed_bytes"] <= mem["int8_container_bytes"] < mem["float32_bytes"]
        if phase in expected_bits:
            assert set(p["weight_bits"].values()) == expected_bits[phase], p["weight_bits"]
    # gq_mixed14: enc_lstm_0 (input and recurrent kernel) at 1 bit, every other kernel at 4
    bits = m["gq_mixed14"]["weight_bits"]
    assert {k: v for k, v in bits.items() if v == 1} == {"enc_lstm_0.kernel": 1, "enc_lstm_0.recurrent_kernel": 1}
    assert set(bits.values()) == {1, 4} and m["gq_mixed14"]["bits_map"]["enc_lstm_0"] == 1
    assert m["native4_conformer"]["weight_bits"]["conf0_ff1_in.kernel"] == 4
    summary = ax.format_summary(m, str(result.dir), 1.0)
    assert "| s8bqat5 | lstm |" in summary and "| 5 |" in summary and "| 1/4 |" in summary


def test_s8bqat_compresses_to_codebooks_and_exports_indices(result):
    model = keras.saving.load_model(str(result.dir / "s8bqat5" / "model.keras"))
    roles = lloyd_max_roles(model)
    assert {role for _, role, _ in roles} == {"kernel", "recurrent_kernel"}
    for layer, role, q in roles:  # the hard compressor ran at the end: ≤ 2^5 values, all of them centroids
        w = keras.ops.convert_to_numpy(getattr(layer, role))
        assert len(np.unique(w)) <= 32 and np.isin(w, q.codebook).all(), (layer.name, role)
    lstm = model.get_layer("enc_lstm_0").quantizers  # the recurrent kernel got its own codebook
    assert lstm["kernel"].centroids != lstm["recurrent_kernel"].centroids
    packed = unpack(str(result.dir / "s8bqat5" / "packed"))
    assert packed["manifest"]["payload_nbytes"] == result.metrics["s8bqat5"]["weight_memory"]["packed_bytes"]
    stored = packed["layers"]["enc_lstm_0"]["recurrent_kernel"]
    assert stored["codes"].bits == 5 and stored["codes"].codebook.shape == (32,)
    np.testing.assert_array_equal(stored["values"], keras.ops.convert_to_numpy(model.get_layer("enc_lstm_0")
                                                                                .recurrent_kernel))


@pytest.mark.slow
def test_method_phase_resumes_after_a_kill(result, tmp_path):
    """s8bqat5 over two epochs (stage 1, stage 2), killed at the start of the second, then run again."""
    shutil.copytree(result.dir / "float", tmp_path / "run" / "float")  # the trained float phase: skipped
    cfg, workdir = tiny_config(tmp_path, ("s8bqat5",), stage1_epochs=1), str(tmp_path / "run")
    build = methods.build

    def killing_build(name, *args, **kwargs):
        setup = build(name, *args, **kwargs)
        setup.callbacks.append(KillAtSecondEpoch())
        return setup

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(methods, "build", killing_build)
        with pytest.raises(Killed):
            ax.run(cfg, workdir, verbose=0)
    killed = read_history(str(tmp_path / "run" / "s8bqat5" / "history.csv"))
    assert len(killed["loss"]) == 1  # the kill came after the first epoch was checkpointed and logged
    m = ax.run(cfg, workdir, verbose=0)["s8bqat5"]
    resumed = m["history"]["loss"]
    assert len(resumed) == 2 and resumed[0] == killed["loss"][0]  # epoch 0 not trained again
    assert all(math.isfinite(v) for v in resumed) and m["stage"] == 2


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("s8bqat", "unknown method 's8bqat'"), ("gq4bit", "unknown method"), ("float", "unknown method 'float'"),
    ("s8bqat9", "bits=9 is not allowed"), ("gq0", "bits=0 is not allowed"), ("gq_mixed19", "bits=9"),
    ("native1_conformer", "bits=1 is not allowed (native-int weights are symmetric)"),
    ("nna4", "bits=4 is not allowed"),
])
def test_bad_method_names_and_bits(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        methods.parse(name)


def test_unknown_method_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'gq_fancy'"):
        ax.run(tiny_config(tmp_path, ("gq4", "gq_fancy")), str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run" / "float").exists()
    with pytest.raises(ValueError, match="distinct QAT phases"):
        ax.run(tiny_config(tmp_path, ("gq4", "gq4")), str(tmp_path / "run2"), verbose=0)


def stand_in_data():
    """What the method builders read of ``ASRData``, for a tiny LSTM RNN-T."""
    return types.SimpleNamespace(model_config=RNNTConfig(n_mels=20, **TINY_MODEL), vocab=types.SimpleNamespace(size=29),
                                 steps_per_epoch=1)


def test_bits_map_pattern_matching_no_layer(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["qat"]["gq"]["low_bit_layers"] = ["enc_lstm_7"]
    with pytest.raises(ValueError, match="gq_mixed14.*pattern 'enc_lstm_7' matches no layer"):
        methods.build("gq_mixed14", cfg, stand_in_data(), None, 1, str(tmp_path))


def test_s8bqat_needs_a_trained_float_model(tmp_path):
    cfg, data = tiny_config(tmp_path), stand_in_data()
    with pytest.raises(ValueError, match="s8bqat5.*centroids requested before a float model exists"):
        methods.build("s8bqat5", cfg, data, None, 1, str(tmp_path))
    untrained = build_rnnt(data.model_config, 29, "float")
    with pytest.raises(ValueError, match="centroids requested before a float model exists.*not been trained"):
        methods.build("s8bqat5", cfg, data, untrained, 1, str(tmp_path))


def test_stage_epochs_per_method_kind(tmp_path):
    cfg = tiny_config(tmp_path)
    assert methods.stage_epochs("gq_mixed14", cfg) == ((0, 1), "train.stage1_epochs/stage2_epochs")
    cfg["qat"]["gq"]["stage_epochs"] = (0, 3)
    assert methods.stage_epochs("gq4", cfg) == ((0, 3), "qat.gq.stage_epochs")
    assert methods.stage_epochs("linear8", cfg)[0] == (0, 1)  # recipes follow config.train
    cfg["qat"]["gq"]["stage_epochs"] = (2,)
    with pytest.raises(ValueError, match=r"config.qat.gq.stage_epochs=\(2,\) is not allowed"):
        methods.stage_epochs("gq_mixed14", cfg)
