"""Fault injection in a run directory (kws_quant.experiments.training.RunDir, resumable_fit; kws_quant.run_files): damaged
backups, backup metadata, model.keras, config.json and metrics.json each give one ValueError naming the file and
what to delete, or resume from the good copy; a kill while model.keras is written loses nothing. In-process, on a
tiny model: the command line's side (one ``error:`` line, exit status 2) is in test_train.py."""
import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kws_quant.experiments.training import RunDir, read_history, resumable_fit

EPOCHS = 3


class Killed(Exception):
    """Stands for a kill at a known point of ``fit``."""


class Recorder(keras.callbacks.Callback):
    """Records the epochs ``fit`` runs; with ``kill_after``, raises ``Killed`` once that many epochs are complete
    (after their history row and backup are written: this callback comes after both)."""

    def __init__(self, kill_after=None):
        super().__init__()
        self.kill_after, self.epochs = kill_after, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.kill_after is not None and epoch + 1 == self.kill_after:
            raise Killed(f"after epoch {epoch + 1}")


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def fit(run, kill_after=None):
    """resumable_fit of phase 'float' for EPOCHS epochs; returns (result or None when killed, epochs run)."""
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :3])).batch(8)
    rec = Recorder(kill_after)
    try:
        result = resumable_fit(tiny_model(), run, "float", data, EPOCHS, callbacks=[rec], verbose=0)
    except Killed:
        result = None
    return result, rec.epochs


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run directory whose phase 'float' was killed after epoch 2 of 3: backup of epoch 2, .bkp of epoch 1."""
    run = RunDir(tmp_path_factory.mktemp("killed") / "run")
    assert fit(run, kill_after=2)[0] is None
    backup = os.path.join(run.path, "float", "backup")
    meta = lambda name: json.load(open(os.path.join(backup, name)))["epoch"]  # noqa: E731
    assert (meta("training_metadata.json"), meta("training_metadata.json.bkp")) == (2, 1)
    return run


@pytest.fixture
def damaged(killed_run, tmp_path):
    """A fresh copy of the killed run and its backup folder."""
    run = RunDir(shutil.copytree(killed_run.path, tmp_path / "run"))
    return run, os.path.join(run.path, "float", "backup")


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


def garbage(path):
    open(path, "wb").write(np.random.default_rng(1).bytes(300))


def assert_every_epoch_once(run):
    csv = os.path.join(run.path, "float", "history.csv")
    import pandas as pd

    assert sorted(pd.read_csv(csv)["epoch"].drop_duplicates()) == list(range(EPOCHS))
    assert len(read_history(csv)["loss"]) == EPOCHS


WEIGHTS, META = "latest.weights.h5", "training_metadata.json"


@pytest.mark.parametrize("damage", [
    lambda d: truncate(os.path.join(d, WEIGHTS)),  # (Keras' own fallback covered this one: kept)
    lambda d: garbage(os.path.join(d, WEIGHTS)),
    lambda d: truncate(os.path.join(d, META)),
    lambda d: open(os.path.join(d, META), "w").write('{"epoch": "two"}'),
    lambda d: open(os.path.join(d, META), "w").write("[]"),
], ids=["weights truncated", "weights random bytes", "metadata truncated", "metadata epoch not a number",
        "metadata not an object"])
def test_a_damaged_latest_backup_resumes_from_the_previous_one(damaged, damage, capsys):
    run, backup = damaged
    damage(backup)
    result, epochs = fit(run)
    assert epochs == [1, 2]  # the .bkp copy holds epoch 1: epoch 2 is trained again
    assert_every_epoch_once(run)
    assert os.path.exists(run.model_path("float")) and not os.path.exists(backup) and result["history"]
    out = capsys.readouterr().out
    assert "warning: phase 'float': the latest backup is damaged (" in out and "resuming from the previous one " \
        "(epoch 1)" in out


def test_a_damaged_previous_copy_is_not_needed(damaged):
    run, backup = damaged
    truncate(os.path.join(backup, WEIGHTS + ".bkp"))
    garbage(os.path.join(backup, META + ".bkp"))
    assert fit(run)[1] == [2]
    assert_every_epoch_once(run)


@pytest.mark.parametrize("damage, named", [
    (lambda d: [truncate(os.path.join(d, n)) for n in (WEIGHTS, WEIGHTS + ".bkp")], [WEIGHTS, WEIGHTS + ".bkp"]),
    (lambda d: [garbage(os.path.join(d, n)) for n in (META, META + ".bkp")], [META, META + ".bkp"]),
    (lambda d: [truncate(os.path.join(d, META), 0.3), *(os.remove(os.path.join(d, n + ".bkp")) for n in
                                                         (WEIGHTS, META))], [META]),
    (lambda d: [truncate(os.path.join(d, WEIGHTS)), os.remove(os.path.join(d, WEIGHTS + ".bkp"))],
     [WEIGHTS, WEIGHTS + ".bkp"]),  # the copy's metadata alone would resume on half-loaded weights
], ids=["both weight files truncated", "both metadata files garbage", "metadata truncated, no previous copy",
        "weights truncated, previous weights missing"])
def test_no_readable_backup_is_one_error_naming_the_files(damaged, damage, named):
    """(These were an OSError traceback naming no file, or "Unterminated string ..." naming none.)"""
    run, backup = damaged
    damage(backup)
    with pytest.raises(ValueError) as e:
        fit(run)
    message = str(e.value)
    assert message.startswith("phase 'float': cannot resume from its backup: ")
    for name in named:
        assert os.path.join(backup, name) + ":" in message
    assert message.endswith(f"Delete the folder {backup} to restart phase 'float' from its first epoch")
    shutil.rmtree(backup)  # what the message says to do: the phase starts again
    assert fit(run)[1] == [0, 1, 2]


@pytest.mark.parametrize("damage", [truncate, garbage,
                                    lambda p: zipfile.ZipFile(p, "w").writestr("config.json", "{}")],
                         ids=["truncated", "random bytes", "a zip without weights"])
def test_a_damaged_model_file_is_one_error_naming_it(tmp_path, damage):
    run = RunDir(tmp_path / "run")
    fit(run)
    assert run.is_complete("float")
    path = run.model_path("float")
    damage(path)
    with pytest.raises(ValueError, match=f"^{path}: not a readable Keras model file: .*; delete it to train phase "
                                         "'float' again") as e:
        run.is_complete("float")
    assert "File not found" not in str(e.value)


def test_a_kill_while_the_model_file_is_written_loses_nothing(tmp_path, monkeypatch):
    """model.keras is written to a temporary file, then renamed; the backup is deleted only after that. (A kill
    during the save used to leave a truncated model.keras, and the phase's backup already deleted.)"""
    run = RunDir(tmp_path / "run")
    save = keras.Model.save

    def killed_while_saving(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        truncate(path)
        raise Killed("while saving")

    monkeypatch.setattr(keras.Model, "save", killed_while_saving)
    assert fit(run)[0] is None  # killed
    monkeypatch.undo()
    assert not run.is_complete("float")
    assert fit(run)[1] == []  # resumed after the last epoch: nothing trained again
    assert run.is_complete("float") and not os.path.exists(os.path.join(run.path, "float", "backup"))
    assert_every_epoch_once(run)


@pytest.mark.parametrize("content, problem", [
    ('{"float": {"test_accuracy": 0.5}', "the run's metrics is not readable JSON"),
    ("[1, 2]", "the run's metrics must be a JSON object, not list"),
    ('{"float": 3}', "the run's metrics of phase 'float' are not a JSON object"),
])
def test_damaged_metrics_json_is_one_error_naming_it(tmp_path, content, problem):
    run = RunDir(tmp_path / "run")
    run.update_metrics("float", {"test_accuracy": 0.5})
    open(run.metrics_path, "w").write(content)
    with pytest.raises(ValueError, match=f"^{run.metrics_path}: {problem}.*delete") as e:
        run.load_metrics()
    with pytest.raises(ValueError, match="metrics.json"):
        run.update_metrics("tanh4", {})
    del e


@pytest.mark.parametrize("content, problem", [
    ('{"train": {"epochs": ', "the run's configuration is not readable JSON"),
    ('"train"', "the run's configuration must be a JSON object, not str"),
    (b"\xff\xfe\x00garbage", "the run's configuration is not readable JSON"),
])
def test_damaged_config_json_is_one_error_naming_it(tmp_path, content, problem):
    run = RunDir(tmp_path / "run")
    run.save_config({"train": {"epochs": 1}})
    path = os.path.join(run.path, "config.json")
    open(path, "wb" if isinstance(content, bytes) else "w").write(content)
    with pytest.raises(ValueError, match=f"^{path}: {problem}.*use a new --workdir"):
        run.save_config({"train": {"epochs": 1}})


def test_the_evaluation_commands_refuse_damaged_run_files(tmp_path):
    """eval.report and asr_ext.evaluate read config.json and the phases' model.keras back: a damaged one is a
    ValueError naming it (it was a JSONDecodeError naming no file, or Keras' "File not found")."""
    from asr_ext.evaluate import folder_config
    from eval.report import load_kws_model, load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"name": "kws", "qat": {')
    for read in (lambda: load_run(str(run)), lambda: folder_config(str(run), str(tmp_path))):
        with pytest.raises(ValueError, match=f"^{run / 'config.json'}: the run's configuration is not readable JSON"):
            read()
    (run / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="the run's configuration must be a JSON object, not list"):
        load_run(str(run))
    model = run / "model.keras"
    garbage(model)
    with pytest.raises(ValueError, match=f"^{model}: not a readable Keras model file: not a zip archive") as e:
        load_kws_model(str(model), 98, 40, 12)
    assert "File not found" not in str(e.value)
