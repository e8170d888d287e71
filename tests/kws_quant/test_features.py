"""Log-mel front end: config arithmetic, librosa reference vs tf.signal agreement, LogMel layer save/load."""
import glob
import os

import keras
import librosa
import numpy as np
import pytest
import tensorflow as tf

from kws_quant.data import load_audio, synthesize
from kws_quant.features import AGREEMENT_TOLERANCE, FeatureConfig, LogMel, logmel_librosa, logmel_tf, mel_matrix
from shared_data import FSDD_RECORDINGS as FSDD

CFG = FeatureConfig()


def test_config_derived_values():
    assert (CFG.win_length, CFG.hop_length, CFG.max_freq) == (400, 160, 8000.0)
    assert CFG.num_frames(16000) == 98 == 1 + (16000 - 400) // 160
    assert CFG.num_frames(400) == 1 and CFG.num_frames(399) == 0
    assert FeatureConfig(sample_rate=8000, n_fft=256).win_length == 200


@pytest.mark.parametrize("kwargs, message", [
    ({"win_ms": 40.0}, "longer than n_fft"),
    ({"fmax": 9000.0}, "fmax"),
    ({"fmin": 9000.0}, "fmin"),
    ({"hop_ms": 0.01}, "hop"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureConfig(**kwargs)


def test_mel_matrix_is_librosa_and_read_only():
    expected = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=8000.0)
    weights = mel_matrix(CFG)
    np.testing.assert_array_equal(weights, expected.astype(np.float32))
    assert weights.shape == (40, 257) and not weights.flags.writeable


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 16000, 12345])
def test_frame_count_matches_formula(samples):
    audio = np.random.default_rng(samples).uniform(-1, 1, samples).astype(np.float32)
    assert logmel_librosa(audio, CFG).shape == (CFG.num_frames(samples), 40)
    assert logmel_tf(audio, CFG).shape == (CFG.num_frames(samples), 40)


def _assert_agree(audio, cfg=CFG):
    ref = logmel_librosa(audio, cfg)
    out = logmel_tf(audio, cfg).numpy()
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() < AGREEMENT_TOLERANCE


def test_tf_agrees_with_librosa_on_noise_tones_and_silence():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    _assert_agree(rng.uniform(-1, 1, 16000).astype(np.float32))
    _assert_agree((0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32))
    silence = np.zeros(16000, np.float32)
    _assert_agree(silence)
    assert np.allclose(logmel_tf(silence, CFG), np.log(CFG.log_floor))


def test_tf_agrees_with_librosa_on_synthetic_speech_and_other_config():
    _assert_agree(synthesize("hey computer, what time is it", "en-us+f3"))
    cfg = FeatureConfig(sample_rate=8000, n_mels=32, win_ms=32.0, hop_ms=16.0, n_fft=256, fmin=50.0, fmax=3800.0)
    _assert_agree(synthesize("seven", "en+m3", sample_rate=8000), cfg)


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="FSDD recordings not available")
def test_tf_agrees_with_librosa_on_real_speech():
    for path in sorted(glob.glob(os.path.join(FSDD, "*.wav")))[::100]:
        _assert_agree(load_audio(path, 16000))


def test_batch_equals_single_clips_and_runs_in_tf_function_and_tf_data():
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 16000)).astype(np.float32)
    batch = logmel_tf(audio, CFG).numpy()
    assert batch.shape == (3, 98, 40)
    for i in range(3):
        np.testing.assert_allclose(batch[i], logmel_tf(audio[i], CFG).numpy(), atol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def graph(x):
        return logmel_tf(x, CFG)

    np.testing.assert_allclose(graph(audio).numpy(), batch, atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices(audio).map(lambda x: logmel_tf(x, CFG)).batch(3)
    np.testing.assert_allclose(next(iter(ds)).numpy(), batch, atol=1e-5)


def test_logmel_layer_in_model_saves_and_loads(tmp_path):
    cfg = FeatureConfig(n_mels=32)
    inputs = keras.Input((16000,))
    features = LogMel(cfg, name="logmel")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(features))
    model = keras.Model(inputs, outputs)
    assert model.get_layer("logmel").output.shape == (None, 98, 32)
    audio = np.random.default_rng(2).uniform(-1, 1, (2, 16000)).astype(np.float32)
    np.testing.assert_allclose(model.get_layer("logmel")(audio).numpy(), logmel_tf(audio, cfg).numpy(), atol=1e-6)

    path = str(tmp_path / "raw_audio_model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(audio, verbose=0), model.predict(audio, verbose=0), atol=1e-5)
    assert loaded.get_layer("logmel").cfg == cfg

    layer = LogMel.from_config(LogMel(cfg).get_config())
    assert layer.cfg == cfg and layer.compute_output_shape((None, 8000)) == (None, 48, 32)


def test_logmel_layer_stays_float32_under_mixed_precision():
    audio = np.random.default_rng(3).uniform(-1, 1, (2, 16000)).astype(np.float32)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = LogMel()(audio)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), logmel_tf(audio, CFG).numpy())
