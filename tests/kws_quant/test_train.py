"""The training script as a user runs it: resume after a kill, bad input, distribution, the run directory."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_args(tmp_path, *extra, float_epochs=2):
    """A small synthetic run: few clips, a narrow model; the rendered audio is cached under ``tmp_path``."""
    return [sys.executable, "-m", "kws_quant.train", f"--workdir={tmp_path / 'run'}", "--verbose=2",
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.synthetic.clips_per_keyword=40", "--config.data.synthetic.unknown_clips=40",
            "--config.data.synthetic.silence_clips=16", "--config.data.batch_size=16",
            "--config.model.hidden=(24,24)", f"--config.train.float_epochs={float_epochs}",
            "--config.train.stage1_epochs=1", "--config.train.stage2_epochs=1",
            "--config.report.negative_hours=0.01", "--config.report.n_boot=10", *extra]


def run(args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def history_epochs(path):
    try:
        return pd.read_csv(path)["epoch"].tolist()
    except (FileNotFoundError, pd.errors.EmptyDataError, KeyError):  # not written yet, or being written
        return []


# Runs kws_quant.train with a hook that SIGKILLs the process right after Keras' BackupAndRestore has written the
# backup of epoch KILL_AFTER (the first phase's), at a known point rather than after a timer.
KILL_AFTER = 2
KILL_HOOK = f"""
import os, runpy, signal, sys
import keras
save = keras.callbacks.BackupAndRestore.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    save(self, epoch, logs)
    if epoch + 1 == {KILL_AFTER}:
        print("killing after the backup of epoch", epoch + 1, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end
runpy.run_module("kws_quant.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_run_resumes_without_losing_a_completed_epoch(tmp_path):
    """Killed right after the backup of epoch 2 of 3 was written, then started again with the same command: it
    resumes at epoch 3 and the history has every epoch exactly once. Damaged run files in between: one error line
    naming the file, exit status 2."""
    # float only (no QAT phase: the resume logic is the one phase loop's, tested once here)
    args = tiny_args(tmp_path, "--config.report.enabled=False", "--config.export.enabled=False",
                     "--config.qat.recipes=()", float_epochs=3)
    phase = tmp_path / "run" / "float"
    killed = run([sys.executable, "-c", KILL_HOOK, *args[3:]])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "killing after the backup of epoch 2" in killed.stdout
    assert json.load(open(phase / "backup" / "training_metadata.json"))["epoch"] == KILL_AFTER
    assert history_epochs(phase / "history.csv") == [0, 1]  # the row of epoch 2 is written before its backup
    assert not (phase / "model.keras").exists()

    # both weight backups truncated (it was an OSError traceback naming no file)
    shutil.copytree(phase / "backup", tmp_path / "backup.good")
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        (phase / "backup" / name).write_bytes((phase / "backup" / name).read_bytes()[:100])
    out = run(args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: phase 'float': cannot resume from its backup: ") and \
        f"{phase / 'backup' / 'latest.weights.h5'}: not readable" in last and \
        last.endswith(f"Delete the folder {phase / 'backup'} to restart phase 'float' from its first epoch"), last

    shutil.rmtree(phase / "backup")
    shutil.copytree(tmp_path / "backup.good", phase / "backup")
    out = run(args)  # the same command
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split("Epoch ")[1].split("/")[0]) == KILL_AFTER + 1  # Keras counts from 1
    assert history_epochs(phase / "history.csv") == [0, 1, 2]  # every epoch exactly once, none lost
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert set(metrics) == {"float"} and len(metrics["float"]["history"]["loss"]) == 3
    assert not (phase / "backup").exists()

    # finished phases are not trained again; a damaged model file is one line naming it (Keras said "File not
    # found" about a file that exists)
    model = phase / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    again = run(args)
    assert again.returncode == 2 and "Epoch 1/" not in again.stdout and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {model}: not a readable Keras model file: not a zip archive (truncated or overwritten?); delete "
        "it to train phase 'float' again (from its first epoch)")


@pytest.mark.subprocess
@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    out = run(tiny_args(tmp_path, "--strategy=mirrored", "--cpu_devices=2", float_epochs=1))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    confusion = np.asarray(metrics["tanh4"]["test_classification"]["confusion"])  # rows: true class
    assert metrics["tanh4"]["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert confusion.sum() == metrics["tanh4"]["test_clips"] > 0
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["train"]["float_epochs"] == 1 and config["data"]["source"] == "synthetic"
    for phase in ("float", "tanh4"):
        assert (tmp_path / "run" / phase / "model.keras").exists()
        assert os.listdir(tmp_path / "run" / phase / "tensorboard")
    assert "| tanh4 |" in out.stdout and "Results in" in out.stdout
    assert (tmp_path / "run" / "report" / "report.md").exists() and "report: " in out.stdout
    # deployment exports of the QAT phase, checked on the test clips, and their table in the report
    export = tmp_path / "run" / "tanh4" / "export"
    for name in ("int8.tflite", "int4.tflite", "core.tflite", "core.front_end.json", "nna-5bit/payload.bin"):
        assert (export / name).exists(), name
    with open(export / "core.front_end.json", encoding="utf-8") as f:  # the run's log-mel settings, for a device
        assert json.load(f)["features"] == {**config["features"], "fmax": None}  # (fmax: FeatureConfig's default)
    d = metrics["tanh4"]["deployment"]
    # (a logit beyond the range calibrated on training/validation windows saturates: a few clips here)
    assert d["within_one_step"] >= 0.9 and d["core_within_one_step"] == d["within_one_step"], d
    # the export scores the test windows in one batch, the evaluation in the dataset's batches: oneDNN may round a
    # near-tie differently for another batch size, so one clip may differ
    assert d["argmax_agreement"] >= 0.9
    assert abs(d["keras_test_accuracy"] - metrics["tanh4"]["test_accuracy"]) * metrics["tanh4"]["test_clips"] <= 1.01
    assert abs(d["int8_test_accuracy"] - d["keras_test_accuracy"]) <= 0.1
    assert d["int8_bytes"] == os.path.getsize(export / "int8.tflite") and d["int8_vs_float32"] > 3.5
    assert "## Deployment exports" in (tmp_path / "run" / "report" / "report.md").read_text()


@pytest.mark.subprocess
@pytest.mark.parametrize("args, message", [  # one case per way the command line reports bad input
    (["--config.train.float_epoch=3"], 'unknown config key in a --config.* override: \'float_epoch\' Did you mean '
                                        '"float_epochs"'),
    (["--config=configs/kws_fsdd.py", "--data_dir=/nonexistent/fsdd"],
     "error: FSDD root: directory does not exist: /nonexistent/fsdd"),
    (["--config=configs/does_not_exist.py"], "cannot load the --config file"),
    (["--bogus"], "error: bad command line: Unknown command line flag 'bogus'\n"),  # the closing quote is kept
    (["--config.data.batch_size=0"], "error: config.data.batch_size=0 must be an integer > 0"),
])
def test_cli_bad_input_gives_one_clear_line(tmp_path, args, message):
    out = run([sys.executable, "-m", "kws_quant.train", f"--workdir={tmp_path / 'run'}", *args], timeout=120)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("override, message", [  # what the command line prints for these (the test above)
    ({"data": {"source": "fsdd"}}, "config.data.source='fsdd' needs a dataset: pass --data_dir"),
    ({"data": {"source": "tape"}}, "config.data.source='tape' is not allowed; allowed: synthetic, fsdd"),
    ({"train": {"learning_rate": float("nan")}}, "config.train.learning_rate=nan must be a finite number > 0"),
    ({"train": {"qat_learning_rate": -1.0}}, "config.train.qat_learning_rate=-1.0 must be a finite number > 0"),
    ({"train": {"float_epochs": -2}}, "config.train.float_epochs=-2 must be an integer >= 0"),
    ({"data": {"feature_cache": "ram"}}, "config.data.feature_cache='ram' is not one of ['auto', 'memory', 'disk'"),
    ({"train": {"ema_momentum": 1.0}}, "config.train.ema_momentum=1.0 must be a number in [0, 1)"),
    ({"train": {"seed": -2}}, "config.train.seed=-2 must be an integer >= 0, or -1"),
])
def test_bad_config_values_are_refused_before_training(tmp_path, override, message):
    import re

    from kws_quant.experiments import kws as kws_experiment
    from kws_quant.config_defaults import kws_config

    cfg = kws_config().to_dict()
    for section, values in override.items():
        cfg[section].update(values)
    with pytest.raises(ValueError, match=re.escape(message)):
        kws_experiment.run(cfg, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run" / "config.json").exists()


def test_training_seed_is_the_split_seed_unless_set():
    """``config.train.seed`` seeds initialisation, shuffling and augmentation; -1 (the default) is ``config.seed``,
    which alone draws the split, so a second training seed keeps the same speakers in each split."""
    from kws_quant.config_defaults import kws_config
    from kws_quant.experiments.training import training_seed

    cfg = kws_config().to_dict()
    cfg["seed"] = 7
    assert cfg["train"]["seed"] == -1 and training_seed(cfg) == 7
    cfg["train"]["seed"] = 0
    assert training_seed(cfg) == 0


@pytest.mark.subprocess
def test_diverging_training_stops_with_the_phase_and_epoch_named(tmp_path):
    """A NaN loss ends the run with exit status 2 and one line naming phase, epoch and batch; nothing is reported,
    exported or saved as a finished phase."""
    out = run(tiny_args(tmp_path, "--config.train.learning_rate=1e30", "--config.train.jit_compile=False",
                        float_epochs=2), timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: phase 'float': the training loss became nan at epoch 1, batch"), last
    assert not (tmp_path / "run" / "float" / "model.keras").exists()
    assert not (tmp_path / "run" / "report").exists()


@pytest.mark.subprocess
def test_workdir_that_is_a_file_is_one_clear_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = run([sys.executable, "-m", "kws_quant.train", f"--workdir={tmp_path / 'afile'}"], timeout=120)
    assert out.returncode == 2 and "exists and is not a directory" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("module, flag", [
    *[(m, "--help") for m in ("asr_ext.train", "asr_ext.evaluate", "eval.report", "kws_quant.export")],
    ("kws_quant.train", "--helpshort"), ("kws_quant.train", "--helpfull")])
def test_help_prints_usage_and_exits_0(module, flag):
    out = run([sys.executable, "-m", module, flag], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower() and "--" in out.stdout
    assert not any(line.startswith("error:") for line in out.stderr.splitlines())


@pytest.mark.subprocess
@pytest.mark.slow
def test_failed_start_does_not_block_the_corrected_rerun(tmp_path):
    """config.json is written only once the inputs were checked: a typo'd --data_dir, then the right one."""
    common = [sys.executable, "-m", "kws_quant.train", "--config=configs/kws_fsdd.py", f"--workdir={tmp_path / 'r'}",
              "--config.train.float_epochs=0", "--config.qat.recipes=()", "--config.report.enabled=False",
              "--config.export.enabled=False"]
    out = run(common + [f"--data_dir={tmp_path / 'typo'}"], timeout=120)
    assert out.returncode == 2 and not (tmp_path / "r" / "config.json").exists()
    good = tmp_path / "fsdd"
    good.mkdir()
    for speaker in ("a", "b", "c", "d"):
        for digit in range(2):
            sf.write(good / f"{digit}_{speaker}_0.wav", np.sin(np.arange(4000) * 0.1 * (digit + 1)) * 0.3, 8000)
    out = run(common + [f"--data_dir={good}", "--config.data.keywords=('zero','one')", "--config.data.test_speakers=('d',)",
                        "--config.data.validation_fraction=0.4"], timeout=300)
    assert "started with a different config" not in out.stderr
    assert (tmp_path / "r" / "config.json").exists(), out.stderr[-2000:]


def test_changed_config_in_same_workdir_is_refused(tmp_path):
    from kws_quant.experiments.training import RunDir

    run_dir = RunDir(str(tmp_path / "r"))
    run_dir.save_config({"train": {"float_epochs": 2}, "name": "x"})
    with pytest.raises(ValueError, match=r"started with a different config \(differs in: train.float_epochs\)"):
        run_dir.save_config({"train": {"float_epochs": 3}, "name": "x"})


# -- bad audio in a user's dataset --------------------------------------------------------------------------
def _digit_tree(root, rng):
    """An FSDD-style folder of synthetic spoken digits from three speakers, plus odd formats."""
    from kws_quant.data import synthesize

    voices = {"alice": "en-us", "bob": "en-gb-x-rp", "carol": "en-us+f3"}
    for speaker, voice in voices.items():
        for digit, word in enumerate(["zero", "one"]):
            for i in range(3):
                audio = synthesize(word, voice=voice, rate=150 + 20 * i)
                sf.write(root / f"{digit}_{speaker}_{i}.wav", audio, 16000)
    # converted, not rejected: stereo at 44.1 kHz, mono at 8 kHz
    tone = np.sin(np.linspace(0, 800, 44100)).astype(np.float32) * 0.3
    sf.write(root / "0_alice_7.wav", np.stack([tone, tone * 0.5], 1), 44100)
    sf.write(root / "1_bob_7.wav", tone[:8000], 8000)


def _fsdd_cfg(root, **data):
    from kws_quant.config_defaults import kws_config

    cfg = kws_config().to_dict()
    cfg["data"].update({"source": "fsdd", "data_dir": str(root), "keywords": ("zero", "one"),
                        "validation_speakers": ("bob",), "test_speakers": ("carol",), "augment": False, **data})
    return cfg


def _train_clips(data):
    return sum(int(y.shape[0]) for _, y in data.train)


def test_stereo_and_odd_rates_are_converted(tmp_path):
    from kws_quant.experiments.kws import prepare_data

    _digit_tree(tmp_path, np.random.default_rng(0))
    data = prepare_data(_fsdd_cfg(tmp_path))
    assert _train_clips(data) == 7  # alice's 6 + her stereo 44.1 kHz file
    x, _ = next(iter(data.validation))
    assert x.shape[1:] == (98, 40) and np.all(np.isfinite(x.numpy()))


@pytest.mark.parametrize("name, content, reason", [
    ("0_alice_8.wav", b"", "empty"),
    ("0_alice_8.wav", b"RIFF\x00\x01\x00\x00WAVEfmt garbage" * 3, "alice_8"),
    ("1_alice_8.wav", b"%PDF-1.4 this is not audio at all", "alice_8"),
])
def test_bad_audio_names_the_file_or_is_skipped(tmp_path, capsys, name, content, reason):
    from kws_quant.experiments.kws import prepare_data

    _digit_tree(tmp_path, np.random.default_rng(0))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as err:
        _train_clips(prepare_data(_fsdd_cfg(tmp_path)))
    assert name in str(err.value)
    data = prepare_data(_fsdd_cfg(tmp_path), skip_bad_files=True)
    assert _train_clips(data) == 7
    printed = capsys.readouterr()
    assert name in printed.out + printed.err


@pytest.mark.subprocess
@pytest.mark.slow
def test_skip_bad_files_flag_on_the_command_line(tmp_path):
    """The CLI: a corrupt WAV stops the run with one line naming it; ``--skip_bad_files`` trains without it."""
    data = tmp_path / "digits"
    data.mkdir()
    _digit_tree(data, np.random.default_rng(0))
    (data / "1_alice_9.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEfmt garbage" * 3)
    args = [sys.executable, "-m", "kws_quant.train", f"--data_dir={data}", "--config.data.source=fsdd",
            "--config.data.keywords=('zero','one')", "--config.data.validation_speakers=('bob',)",
            "--config.data.test_speakers=('carol',)", "--config.data.augment=False", "--config.train.float_epochs=1",
            "--config.qat.recipes=()", "--config.report.enabled=False"]
    failed = run([*args, f"--workdir={tmp_path / 'run1'}"], timeout=300)
    assert failed.returncode == 2 and "1_alice_9.wav" in failed.stderr and "Traceback" not in failed.stderr
    skipped = run([*args, f"--workdir={tmp_path / 'run2'}", "--skip_bad_files"], timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "1_alice_9.wav" in skipped.stdout + skipped.stderr
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert metrics["float"]["epochs"] == 1 and "test_accuracy" in metrics["float"]


def test_keyword_not_in_the_data_is_named(tmp_path):
    from kws_quant.experiments.kws import load_manifest

    _digit_tree(tmp_path, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"keyword label\(s\) \['eleven'\] from config.data.keywords have no clips"):
        load_manifest(_fsdd_cfg(tmp_path, keywords=("zero", "eleven")))


@pytest.mark.subprocess
def test_quick_start_scripts_pass_flags_through(tmp_path):
    """``bash scripts/demo.sh --data_dir=...``: the sourced installer must leave the caller's flags alone."""
    import glob

    if not glob.glob(os.path.join(ROOT, ".venv", ".installed-*-dev,litert,tfmot")):
        pytest.skip("needs the .venv that scripts/test.sh installs")
    flags = ["--data_dir=../shared/data/fsdd", "--config.train.float_epochs=3"]
    script = 'KWS_EXTRAS=dev,litert,tfmot; source scripts/env.sh; printf "%s\\n" "$@"'
    out = subprocess.run(["bash", "-c", script, "demo", *flags], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == flags


def test_weight_average_is_what_the_phase_validates_and_keeps(tmp_path):
    """``config.train.ema_momentum``: the saved model holds the moving average of the weights after every step
    (recomputed here from the raw weights), not the last step's weights, and validation reads the average."""
    import keras
    import tensorflow as tf

    from kws_quant.experiments.kws import compile_model
    from kws_quant.experiments.training import PhasePlan, RunDir, run_phase

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 5)).astype("float32"), rng.integers(0, 3, 64)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    raw, momentum = [], 0.5

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([w.numpy() for w in self.model.trainable_weights])

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        compile_model(model, 0.05, 12, jit_compile=False, ema_momentum=momentum)
        return model, [Record()], {}

    plan = PhasePlan("float", (3, 0), False, build, lambda m: {"test_loss": float(m.evaluate(x, y, verbose=0)[0])},
                     "test_loss")
    run_dir = RunDir(str(tmp_path / "run"))
    model = run_phase(run_dir, plan, tf.distribute.get_strategy(), train, train, verbose=0)
    average = raw[0]  # Keras starts the average at the first step's weights
    for step in raw[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step)]
    saved = keras.saving.load_model(run_dir.model_path("float")).get_weights()
    for kept, avg, last in zip(saved, average, raw[-1]):
        np.testing.assert_allclose(kept, avg, rtol=1e-5, atol=1e-6)
        assert np.abs(kept - last).max() > 1e-3
    metrics = run_dir.load_metrics()["float"]
    np.testing.assert_allclose(metrics["history"]["val_loss"][-1], metrics["test_loss"], rtol=1e-5)
    assert len(raw) == 3 * 4 and model.count_params() == 18


def test_a_resumed_phase_keeps_the_weight_average(tmp_path):
    """Interrupted after the backup of epoch 1 of 3 and run again, a phase with ``ema_momentum`` ends with the
    weights of an uninterrupted run: the average (an optimizer variable) is in the backup and restored with it."""
    import keras
    import tensorflow as tf

    from kws_quant.experiments.kws import compile_model
    from kws_quant.experiments.training import PhasePlan, RunDir, run_phase

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 5)).astype("float32"), rng.integers(0, 3, 64)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    class Killed(Exception):
        pass

    class KillAfterFirstBackup(keras.callbacks.Callback):  # runs after the backup callback (resumable_fit's order)
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    def phase(run_dir, kill):
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
            compile_model(model, 0.05, 12, jit_compile=False, ema_momentum=0.5)
            return model, [KillAfterFirstBackup()] if kill else [], {}

        plan = PhasePlan("float", (3, 0), False, build, lambda m: {"done": True}, "done")
        return run_phase(RunDir(str(tmp_path / run_dir)), plan, tf.distribute.get_strategy(), train, verbose=0)

    straight = phase("straight", kill=False).get_weights()
    with pytest.raises(Killed):
        phase("resumed", kill=True)
    assert (tmp_path / "resumed" / "float" / "backup").is_dir()
    resumed = phase("resumed", kill=False).get_weights()
    for a, b in zip(resumed, straight):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # it resumed at epoch 2 (a restart from scratch would have appended epochs 0, 1, 2 again)
    assert pd.read_csv(tmp_path / "resumed" / "float" / "history.csv")["epoch"].tolist() == [0, 1, 2]
