"""Scoring a finished KWS run on another folder of its layout (``eval.report --data_dir``): the run's config pointed
at the folder, its label order, the resampling note, and each model's clip classification on every clip."""
from __future__ import annotations

import json
import os


def folder_config(cfg: dict, data_dir: str) -> dict:
    """The run's config pointed at ``data_dir``: same source layout, features and labels, no training-time
    resampling of the splits (no held-out fraction, no oversampling)."""
    import copy

    from kws_quant.data import require_evaluation_folder

    folder = require_evaluation_folder(data_dir, cfg["data"]["source"])
    cfg = copy.deepcopy(cfg)
    cfg["data"].update(data_dir=folder, validation_fraction=0.0, keyword_oversample=1,
                       validation_speakers=(), test_speakers=())
    return cfg


def run_labels(paths: dict, default):
    """The label order the run's models were trained with (``<phase>/labels.json``), else ``default``."""
    for path in paths.values():
        labels_path = os.path.join(os.path.dirname(path), "labels.json")
        if os.path.isfile(labels_path):
            with open(labels_path, encoding="utf-8") as f:
                return json.load(f)
    return default


def note_resampling(paths, sample_rate: int) -> list[int]:
    """Print (and return) the sample rates of ``paths`` that differ from the run's: that audio is resampled."""
    from kws_quant.data import other_sample_rates

    rates = other_sample_rates(paths, sample_rate)
    if rates:
        print(f"note: audio at {', '.join(map(str, rates))} Hz is resampled to the run's {sample_rate} Hz")
    return rates


def folder_clip_metrics(cfg, manifest, label_names, models: dict, features, skip_bad_files) -> dict:
    """``{name: {"test_classification": ...}}`` of every loaded model (``{name: keras.Model}``) on every clip of
    ``manifest`` (its test split)."""
    from eval.classification import classification_metrics, predict
    from kws_quant.data import make_dataset

    ds = make_dataset(manifest, "test", label_names, features, cfg["data"]["clip_seconds"],
                      cfg["data"]["batch_size"], skip_bad_files=skip_bad_files, trim_db=cfg["data"]["trim_db"])
    out = {}
    for name, model in models.items():
        logits, labels = predict(model, ds)
        c = classification_metrics(labels, logits, len(label_names))
        out[name] = {"test_classification": c, "test_accuracy": c["accuracy"], "test_clips": c["clips"]}
    return out
