"""Training machinery shared by the KWS and ASR scripts: run directories, resumable fits, strategies.

A run directory holds::

    config.json            the resolved configuration
    <phase>/backup/        Keras BackupAndRestore state (weights + optimizer + epoch) while a phase runs
    <phase>/history.csv    per-epoch metrics (appended across resumes)
    <phase>/tensorboard/   TensorBoard logs
    <phase>/model.keras    the phase's final model; its presence marks the phase as complete
    metrics.json           results, merged phase by phase

Killed at any point and started again with the same command, a run skips completed phases and resumes the
interrupted one from its last completed epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from kws_quant import qat
from kws_quant.distributed import agree_on_backup, make_strategy  # noqa: F401 (make_strategy: re-exported)
from kws_quant.layers import copy_weights
from kws_quant.run_files import (CheckedBackupAndRestore, check_keras_file, merged,  # noqa: F401 (re-exported)
                                 ptq_phase_name, read_json, save_model_atomically)


def configure_cpu_devices(count: int) -> None:
    """Split the CPU into ``count`` logical devices (to run ``mirrored`` on a CPU-only machine). Call first."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def write_json(path: str, data) -> None:
    """Write ``data`` as indented JSON atomically (a kill never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=_json_default, sort_keys=True)
    os.replace(tmp, path)


class RunDir:
    """One experiment's output directory (see the module docstring)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise FileExistsError(f"--workdir={path}: exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)

    def phase(self, name: str) -> str:
        d = os.path.join(self.path, name)
        os.makedirs(d, exist_ok=True)
        return d

    def model_path(self, phase: str) -> str:
        return os.path.join(self.path, phase, "model.keras")

    def is_complete(self, phase: str) -> bool:
        """Whether ``<phase>/model.keras`` exists; one that exists but is damaged raises ``ValueError`` naming it."""
        path = self.model_path(phase)
        if not os.path.exists(path):
            return False
        check_keras_file(path, f"delete it to train phase {phase!r} again (from its first epoch)")
        return True

    def save_config(self, config: dict) -> None:
        """Write ``config.json``; refuse to resume a run directory that was started with a different config."""
        path = os.path.join(self.path, "config.json")
        if os.path.exists(path):
            old = read_json(path, "the run's configuration", f"delete the run directory {self.path} or use a new "
                            "--workdir")
            new = json.loads(json.dumps(config, default=_json_default))
            if old != new:
                diff = sorted(k for k in set(_flatten(old)) | set(_flatten(new))
                              if _flatten(old).get(k) != _flatten(new).get(k))
                raise ValueError(f"run directory {self.path} was started with a different config "
                                 f"(differs in: {', '.join(diff[:8])}); use a new --workdir or delete it")
        write_json(path, config)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, "metrics.json")

    def load_metrics(self) -> dict:
        if not os.path.exists(self.metrics_path):
            return {}
        metrics = read_json(self.metrics_path, "the run's metrics", "delete it: finished phases are evaluated again "
                            "(their training history is then no longer in it)")
        bad = [k for k, v in metrics.items() if not isinstance(v, dict)]
        if bad:
            raise ValueError(f"{self.metrics_path}: the run's metrics of phase {bad[0]!r} are not a JSON object; "
                             "delete the file: finished phases are evaluated again")
        return metrics

    def update_metrics(self, phase: str, values: dict) -> dict:
        metrics = self.load_metrics()
        metrics[phase] = {**metrics.get(phase, {}), **values}
        write_json(self.metrics_path, metrics)
        return metrics


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_training_config(cfg: dict, epoch_keys=("float_epochs", "stage1_epochs", "stage2_epochs")) -> None:
    """Refuse training values that make no sense before anything runs (one error naming the key and value): epochs
    (``cfg["train"][k]`` for ``epoch_keys``) integers >= 0, learning rates finite and > 0, batch size > 0."""
    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    t, d = cfg["train"], cfg["data"]
    for key in epoch_keys:
        if not (integer(t[key]) and t[key] >= 0):
            raise ValueError(f"config.train.{key}={t[key]!r} must be an integer >= 0")
    for key in ("learning_rate", "qat_learning_rate"):
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"config.train.{key}={v!r} must be a finite number > 0")
    ema = t.get("ema_momentum", 0.0)
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
        raise ValueError(f"config.train.ema_momentum={ema!r} must be a number in [0, 1) (0: no weight average)")
    seed = t.get("seed", -1)
    if not (integer(seed) and seed >= -1):
        raise ValueError(f"config.train.seed={seed!r} must be an integer >= 0, or -1 (config.seed, the split's)")
    if not (integer(d["batch_size"]) and d["batch_size"] > 0):
        raise ValueError(f"config.data.batch_size={d['batch_size']!r} must be an integer > 0")


def training_seed(cfg: dict) -> int:
    """The seed of initialisation, shuffling and augmentation: ``config.train.seed``, or ``config.seed`` (which also
    draws the data split) when it is -1 or absent. A second training seed on the same split is one changed field."""
    seed = cfg["train"].get("seed", -1)
    return cfg["seed"] if seed == -1 else seed


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN/inf, naming the phase, epoch and batch. It raises (Keras'
    ``TerminateOnNaN`` only ends ``fit`` quietly, and the run would go on to report and export a broken model); the
    batch's weights are never saved, so the phase's backup keeps its last completed epoch."""

    def __init__(self, phase: str, backup_dir: str):
        super().__init__()
        self.phase, self.backup_dir, self.epoch = phase, backup_dir, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingDiverged(
                f"phase {self.phase!r}: the training loss became {float(loss)} at epoch {self.epoch + 1}, batch "
                f"{batch + 1}; stopped before saving it (the last completed epoch stays in {self.backup_dir}). "
                "Lower the learning rate or check the data.")


def resumable_fit(model: keras.Model, run: RunDir, phase: str, train_ds, epochs: int, validation_data=None,
                  callbacks=(), verbose: int = 1, save_every_steps: int | None = None) -> dict:
    """``model.fit`` that resumes after a kill, logs to CSV and TensorBoard, then saves ``<phase>/model.keras``.

    Returns ``{"history": {metric: [per-epoch values]}, "train_seconds": float}`` (history from the CSV, so it spans
    resumed runs). The model must be compiled and built.
    """
    d = run.phase(phase)
    # The backup is deleted only once model.keras is saved (a kill while saving resumes from it); a damaged backup
    # falls back to its previous copy or is one error naming the files (kws_quant.run_files).
    backup = CheckedBackupAndRestore(os.path.join(d, "backup"), phase, double_checkpoint=True,
                                     save_freq=save_every_steps or "epoch", delete_checkpoint=False)
    csv_path = os.path.join(d, "history.csv")
    # Order: a NaN batch raises before a batch-level backup could save it; an epoch's CSV row is written before its
    # backup, so a kill in between repeats the epoch (read_history keeps its last row) instead of losing its row.
    cbs = [StopOnNonFiniteLoss(phase, os.path.join(d, "backup")), keras.callbacks.CSVLogger(csv_path, append=True),
           backup, *callbacks, keras.callbacks.TensorBoard(os.path.join(d, "tensorboard"), write_graph=False)]
    agree_on_backup(model.distribute_strategy, os.path.join(d, "backup"))  # multi-worker: one resume epoch
    start = time.perf_counter()
    model.fit(train_ds, epochs=epochs, validation_data=validation_data, callbacks=cbs, verbose=verbose,
              shuffle=False)  # datasets shuffle themselves
    seconds = time.perf_counter() - start
    save_model_atomically(model, run.model_path(phase))
    shutil.rmtree(os.path.join(d, "backup"), ignore_errors=True)
    return {"history": read_history(csv_path), "train_seconds": seconds}


@dataclasses.dataclass
class PhasePlan:
    """What :func:`run_phase` needs to train one phase of a KWS or ASR run.

    Attributes:
        name: the phase's folder and metrics key.
        stages: ``(stage-1 epochs, stage-2 epochs)`` of the two-stage QAT schedule (METHODS §3); a float phase has
            ``(epochs, 0)`` and ``quantized=False``.
        quantized: whether the model is a QAT model (the schedule's callback then switches its stages).
        build: ``() -> (compiled model, callbacks, info)``, called under the strategy's scope; ``info`` is recorded in
            the metrics (e.g. a method's settings; ``facts`` win a shared key).
        evaluate: ``model -> metrics`` on the held-out splits.
        evaluated_key: a metric ``evaluate`` records; a reused phase without it is evaluated again.
        facts: ``model -> metrics`` recorded with every evaluation (recipe, parameters, weight bits).
        prepare: ``model -> None`` after the build, outside the scope (e.g. copy the float weights in).
        recipe: shown in the phase's header line.
    """

    name: str
    stages: tuple
    quantized: bool
    build: object
    evaluate: object
    evaluated_key: str
    facts: object = None
    prepare: object = None
    recipe: object = None


def run_phase(run: RunDir, plan: PhasePlan, strategy, train_ds, validation_ds=None, verbose: int = 1) -> keras.Model:
    """The one phase loop of the KWS and ASR runners: train (or resume, or reuse) a phase, record its metrics
    (``facts``, epochs, ``info``, per-epoch history, training time, QAT stage, evaluation) and return the model.

    A phase with ``<phase>/model.keras`` is loaded, not trained (evaluated again if its metrics lack
    ``evaluated_key``); an interrupted one resumes from its last completed epoch (:func:`resumable_fit`)."""
    facts = plan.facts or (lambda model: {})
    if run.is_complete(plan.name):
        model = keras.saving.load_model(run.model_path(plan.name))
        if plan.evaluated_key not in run.load_metrics().get(plan.name, {}):
            run.update_metrics(plan.name, {**facts(model), **plan.evaluate(model)})
        return model
    with strategy.scope():
        model, callbacks, info = plan.build()
    if plan.prepare is not None:
        plan.prepare(model)
    epochs = sum(plan.stages)
    callbacks = [*ema_callbacks(model), *([qat.TwoStageQAT(stage1_at=0, stage2_at=plan.stages[0],
                                                           verbose=verbose > 0)] if plan.quantized else []),
                 *callbacks]
    print(f"\n== phase {plan.name}: recipe {plan.recipe!r}, {model.count_params():,} parameters, {epochs} epochs ==")
    result = resumable_fit(model, run, plan.name, train_ds, epochs, validation_data=validation_ds,
                           callbacks=callbacks, verbose=verbose)
    run.update_metrics(plan.name, {"epochs": epochs, **info, **facts(model), "history": result["history"],
                                   "train_seconds_last_session": result["train_seconds"],
                                   "stage": qat.get_stage(model), **plan.evaluate(model)})
    return model


def ema_callbacks(model) -> list:
    """Validate on the weights' moving average when the optimizer keeps one (Keras' ``use_ema``)."""
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=False)] if getattr(model.optimizer, "use_ema", False) else []


def read_history(csv_path: str) -> dict:
    """Per-epoch metrics from a CSVLogger file, keeping the last row of each epoch (resumes may repeat one)."""
    import pandas as pd

    try:  # a kill can leave a torn last line: skip it
        df = pd.read_csv(csv_path, on_bad_lines="skip").dropna(subset=["epoch"])
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    df = df.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return {c: df[c].tolist() for c in df.columns if c != "epoch"}


def transfer_weights(src: keras.Model, dst: keras.Model) -> int:
    """Float → QAT initialisation: :func:`kws_quant.layers.copy_weights` without the QAT stage flag (``dst`` keeps
    its own stage; variables only ``dst`` has, such as range statistics, keep their values). Returns the number of
    variables copied; raises if a shared variable's shape differs."""
    return copy_weights(src, dst, skip=("qat_stage",))
