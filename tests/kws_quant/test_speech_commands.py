"""Speech Commands 12-class: the test archive's layout, SpecAugment, post-training baselines, the classification
report; and, when ``../shared`` is present, the real folder's speaker-disjoint split."""
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from eval.classification import classification_metrics, wilson_interval
from kws_quant import qat
from kws_quant.data import SpecAugmentConfig, check_speaker_disjoint, read_speech_commands, spec_augment
from kws_quant.data import speech_commands_speaker
from kws_quant.models import KWSModelConfig, build_kws_model
from shared_data import SPEECH_COMMANDS_ROOT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = {"yes": 300.0, "no": 600.0, "up": 1200.0}


def write_tone(path, freq, rng, seconds=0.6, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.05 * rng.standard_normal()) * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")


def make_test_archive(root, speakers=12, clips=2, seed=0):
    """The canonical test archive's layout: word folders, ``_unknown_/<word>_<speaker>_nohash_<n>.wav.wav``,
    ``_silence_/<n>.wav`` and ``_background_noise_``; no list files."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:08x}" for i in range(0xA0, 0xA0 + speakers)]
    for speaker in ids:
        for n in range(clips):
            for word, freq in WORDS.items():
                write_tone(os.path.join(root, word, f"{speaker}_nohash_{n}.wav"), freq, rng)
            write_tone(os.path.join(root, "_unknown_", f"bird_{speaker}_nohash_{n}.wav.wav"), 2400.0, rng)
    os.makedirs(os.path.join(root, "_silence_"))
    for n in range(speakers):
        sf.write(os.path.join(root, "_silence_", f"{100 + n}.wav"),
                 (0.003 * rng.standard_normal(16000)).astype(np.float32), 16000, subtype="PCM_16")
    noise = os.path.join(root, "_background_noise_", "white_noise.wav")
    os.makedirs(os.path.dirname(noise), exist_ok=True)
    sf.write(noise, (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
    return ids


def test_speaker_id_of_every_file_name_form():
    assert speech_commands_speaker("3cfc6b3a_nohash_1.wav") == "3cfc6b3a"
    assert speech_commands_speaker("backward_0c540988_nohash_0.wav.wav") == "0c540988"
    assert speech_commands_speaker("learn_a1b2c3d4_nohash_12.wav") == "a1b2c3d4"
    assert speech_commands_speaker("1024.wav") == "1024"


def test_test_archive_layout_splits_by_speaker_across_unknown_and_silence(tmp_path):
    root = tmp_path / "sc"
    ids = make_test_archive(str(root))
    manifest, noise = read_speech_commands(str(root), fractions=(0.5, 0.25, 0.25), seed=1)
    assert noise == [str(root / "_background_noise_" / "white_noise.wav")]
    assert sorted(manifest.label.unique()) == ["_silence_", "_unknown_", "no", "up", "yes"]
    # the _unknown_ files' speaker is the hash, not "bird_<hash>": one speaker, one split, in every folder
    assert set(manifest.speaker) == set(ids) | {f"_silence_/{100 + n}" for n in range(len(ids))}
    check_speaker_disjoint(manifest)
    assert set(manifest.split) == {"train", "validation", "test"}
    again, _ = read_speech_commands(str(root), fractions=(0.5, 0.25, 0.25), seed=1)
    assert again.equals(manifest)  # deterministic
    other, _ = read_speech_commands(str(root), fractions=(0.5, 0.25, 0.25), seed=2)
    assert not other["split"].equals(manifest["split"])


# ---------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_bands_with_the_example_mean():
    cfg = SpecAugmentConfig(time_masks=2, time_width=7, freq_masks=1, freq_width=4)
    x = tf.random.stateless_normal([16, 50, 20], seed=[1, 2]) + 3.0
    y = spec_augment(x, cfg, tf.constant([5, 6])).numpy()
    x = x.numpy()
    changed = y != x
    mean = x.mean(axis=(1, 2))
    for b in range(16):
        np.testing.assert_allclose(y[b][changed[b]], mean[b], rtol=1e-6)  # masked cells: the example mean
        rows = changed[b].all(axis=1)          # masked frames (every bin)
        cols = changed[b].all(axis=0)          # masked bins (every frame)
        assert rows.sum() <= 2 * 7 and cols.sum() <= 4
        # every changed cell lies in a masked frame or a masked bin
        assert (changed[b] == (rows[:, None] | cols[None, :])).all()
    assert changed.any()
    np.testing.assert_array_equal(spec_augment(x, cfg, tf.constant([5, 6])).numpy(), y)   # same seed, same masks
    assert not np.array_equal(spec_augment(x, cfg, tf.constant([7, 8])).numpy(), y)
    off = SpecAugmentConfig(time_masks=0, freq_masks=0)
    np.testing.assert_array_equal(spec_augment(x, off, tf.constant([5, 6])).numpy(), x)


def test_spec_augment_config_refuses_bad_values():
    with pytest.raises(ValueError, match="time_width=-1"):
        SpecAugmentConfig(time_width=-1)
    with pytest.raises(ValueError, match="freq_masks=1.5"):
        SpecAugmentConfig(freq_masks=1.5)


# ---------------------------------------------------------------- post-training calibration


def test_calibrate_sets_ranges_to_the_batch_min_max_and_stage_2():
    keras.utils.set_random_seed(0)
    cfg = KWSModelConfig(window_frames=20, n_mels=8, hidden=(16, 16))
    model = build_kws_model(cfg, 4, "tanh4")
    x = np.random.default_rng(0).normal(2.0, 3.0, (256, 20, 8)).astype(np.float32)
    qat.calibrate(model, x)
    assert qat.get_stage(model) == 2
    # the input quantizer sees the pooled, normalised window: its range is that tensor's min and max
    probe = keras.Model(model.input, model.get_layer("pool").output)
    seen = probe(x, training=False).numpy()
    layer = model.get_layer("input_quant")
    ranges = {v.path.split("/")[-1]: float(np.asarray(v)) for v in layer.weights if "ema_m" in v.path}
    np.testing.assert_allclose([ranges["output_ema_min"], ranges["output_ema_max"]], [seen.min(), seen.max()],
                               rtol=1e-5)
    # a second calibration forgets the first (not a moving average of both)
    qat.calibrate(model, x / 10)
    ranges = {v.path.split("/")[-1]: float(np.asarray(v)) for v in layer.weights if "ema_m" in v.path}
    seen = probe(x / 10, training=False).numpy()
    np.testing.assert_allclose(ranges["output_ema_max"], seen.max(), rtol=1e-5)


# ---------------------------------------------------------------- classification metrics


def test_wilson_interval_known_values_and_edges():
    low, high = wilson_interval(8, 10)
    np.testing.assert_allclose([low, high], [0.4902, 0.9433], atol=1e-4)  # standard table value
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert 0 < wilson_interval(0, 20)[1] < 0.2
    with pytest.raises(ValueError, match="hits=11, n=10"):
        wilson_interval(11, 10)


def test_classification_metrics_confusion():
    labels = np.array([0, 0, 1, 2, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 2, 0, 2]]
    m = classification_metrics(labels, logits, 3)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["clips"] == 6
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["accuracy_ci95"][0] < 4 / 6 < m["accuracy_ci95"][1]


# ---------------------------------------------------------------- the experiment, end to end


@pytest.fixture(scope="module")
def sc_run(tmp_path_factory):
    """One tiny run on the test archive's layout: float, its post-training baseline and tanh4, with the report."""
    tmp = tmp_path_factory.mktemp("sc")
    root = tmp / "sc"
    make_test_archive(str(root), speakers=16)
    work = tmp / "run"
    args = [sys.executable, "-m", "kws_quant.train", "--config=configs/kws_speech_commands.py",
            f"--data_dir={root}", f"--workdir={work}", "--verbose=0",
            "--config.data.keywords=('yes','no','up')", "--config.data.split_fractions=(0.5,0.25,0.25)",
            "--config.data.batch_size=16", "--config.model.hidden=(24,24)", "--config.train.float_epochs=3",
            "--config.train.stage1_epochs=1", "--config.train.stage2_epochs=1", "--config.qat.recipes=('tanh4',)",
            "--config.qat.ptq_calibration_windows=32", "--config.data.spec_augment.time_masks=1",
            "--config.report.negative_hours=0.01", "--config.report.n_boot=10", "--config.export.enabled=False"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return work, proc


@pytest.mark.slow
def test_speech_commands_run_with_post_training_baseline_and_report(sc_run):
    work, proc = sc_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran out of data" not in proc.stderr + proc.stdout  # validation/test datasets know their length
    metrics = json.load(open(work / "metrics.json"))
    assert list(metrics) == ["float", "ptq_tanh4", "tanh4"]
    assert metrics["ptq_tanh4"]["post_training"] and metrics["ptq_tanh4"]["stage"] == 2
    for phase in metrics.values():
        for split in ("validation", "test"):
            c = phase[f"{split}_classification"]
            assert np.asarray(c["confusion"]).shape == (5, 5) and np.asarray(c["confusion"]).sum() == c["clips"]
            assert c["accuracy_ci95"][0] <= c["accuracy"] <= c["accuracy_ci95"][1]
    report = (work / "report" / "report.md").read_text()
    assert "5-class top-1 accuracy" in report and "ptq_tanh4" in report
    assert (work / "report" / "confusion.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the real folder (../shared)

needs_speech_commands = pytest.mark.skipif(not os.path.isdir(SPEECH_COMMANDS_ROOT),
                                           reason="../shared/data/speech_commands is absent")


@needs_speech_commands
def test_shared_folder_split_of_the_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sc_config", os.path.join(ROOT, "configs", "kws_speech_commands.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    manifest, noise = read_speech_commands(SPEECH_COMMANDS_ROOT, fractions=cfg.data.split_fractions, seed=cfg.seed)
    assert len(manifest) == 3882 and len(noise) == 6
    assert sorted(manifest.label.unique()) == sorted(["_silence_", "_unknown_", *cfg.data.keywords])
    check_speaker_disjoint(manifest)
    voices = manifest[manifest.label != "_silence_"].groupby("split")["speaker"].nunique()
    assert voices["validation"] >= 40 and voices["test"] >= 20


@pytest.mark.subprocess
@pytest.mark.slow
def test_evaluate_a_finished_run_on_another_folder(sc_run, tmp_path):
    """eval.report --data_dir: the run's models scored on a user's folder (8 kHz audio, resampled and said so);
    bad folders get one clear line (on the command line once; the other cases in-process)."""
    from eval.report import report_run

    work, proc = sc_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    mine = tmp_path / "mine"
    rng = np.random.default_rng(5)
    for n in range(3):
        for word, freq in WORDS.items():
            write_tone(os.path.join(mine, word, f"abcdef{n:02d}_nohash_0.wav"), freq, rng, rate=8000)
    report = [sys.executable, "-m", "eval.report", f"--run_dir={work}", f"--data_dir={mine}", "--n_boot=5",
              "--negative_hours=0.002", "--stream_seconds=10"]
    proc = subprocess.run(report, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "audio at 8000 Hz is resampled to the run's 16000 Hz" in proc.stdout
    md = (work / "eval_mine" / "report.md").read_text()
    assert f"on {mine}" in md and "| float |" in md and "top-1 accuracy" in md
    write_tone(os.path.join(tmp_path, "cats", "cat", "abcdef00_nohash_0.wav"), 500.0, rng)
    os.makedirs(tmp_path / "empty")
    proc = subprocess.run(report[:4] + [f"--data_dir={tmp_path / 'nothing'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    for bad, message in ((tmp_path / "empty", "no <label>/*.wav files"), (mine / "yes", "no <label>/*.wav files"),
                         (tmp_path / "cats", "keyword label")):
        with pytest.raises(ValueError, match=re.escape(message)):
            report_run(str(work), data_dir=str(bad), n_boot=5)
