r"""Score a finished ASR run's models on another folder of its layout (WER/CER), without retraining.

    python -m asr_ext.evaluate --run_dir=runs/asr_an4 --data_dir=/path/to/my_an4_copy
    python -m asr_ext.evaluate --run_dir=runs/asr_an4 --data_dir=... --phases=float,tanh4 --out=my_eval

Every utterance of the folder is test material, decoded with the run's own features, vocabulary and decoding
settings (audio at another sample rate is resampled, and the command says so). Writes ``<out>/metrics.json`` and
``<out>/<phase>/test_hypotheses.tsv`` (default ``<run_dir>/eval_<folder>``) and prints a table. Bad input (a folder
that does not exist, is empty or of another layout, transcripts outside the vocabulary) ends with one ``error: ...``
line and exit status 2.
"""
from __future__ import annotations

import copy
import json
import os
import sys

from absl import app, flags

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A finished asr_ext.train run directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder to evaluate on (the run's layout: config.data.source).")
_PHASES = flags.DEFINE_string("phases", "", "Comma-separated phases (default: every phase with a model.keras).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <run_dir>/eval_<folder>).")


def folder_config(run_dir: str, data_dir: str) -> dict:
    """The run's config pointed at ``data_dir`` (same source layout, features and decoding)."""
    from asr_ext.experiments.asr import asr_config
    from kws_quant.run_files import read_json
    from kws_quant.run_files import merged

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not an asr_ext run directory: no config.json")
    saved = read_json(path, "the run's configuration", "it is written by asr_ext.train: restore it, or train the "
                      "run again into a new --workdir")
    cfg = merged(asr_config().to_dict(), saved)
    from kws_quant.data import require_evaluation_folder

    folder = require_evaluation_folder(data_dir, cfg["data"]["source"])
    cfg = copy.deepcopy(cfg)
    cfg["data"]["data_dir"] = folder
    return cfg


def evaluate_folder(run_dir: str, data_dir: str, phases=None, out_dir: str | None = None) -> dict:
    """``{phase: metrics}`` of the run's models on every utterance of ``data_dir``; also written to
    ``<out_dir>/metrics.json``."""
    import keras

    import asr_ext  # noqa: F401  (registers the layers and the loss)
    from asr_ext.experiments.asr import evaluate, load_manifest, prepare_data
    from kws_quant.data import other_sample_rates
    from kws_quant.run_files import check_keras_file

    cfg = folder_config(run_dir, data_dir)
    manifest = load_manifest(cfg).assign(split="test")
    paths = [seg[0] for segs in manifest["segments"] for seg in segs if seg[0]]
    rates = other_sample_rates(dict.fromkeys(paths), cfg["features"]["sample_rate"])
    if rates:
        print(f"note: audio at {', '.join(map(str, rates))} Hz is resampled to the run's "
              f"{cfg['features']['sample_rate']} Hz")
    data = prepare_data(cfg, manifest, training=False)
    found = sorted(p for p in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, p, "model.keras")))
    phases = list(phases) if phases else found
    missing = [p for p in phases if p not in found]
    if missing:
        raise FileNotFoundError(f"no trained model for {missing} in {run_dir}; phases with a model: {found}")
    out_dir = out_dir or os.path.join(run_dir, f"eval_{os.path.basename(os.path.normpath(data_dir))}")
    results = {}
    for phase in phases:
        path = os.path.join(run_dir, phase, "model.keras")
        check_keras_file(path, "delete it and run asr_ext.train again with the same command to train that phase "
                         "again")
        model = keras.saving.load_model(path)
        phase_dir = os.path.join(out_dir, phase)
        os.makedirs(phase_dir, exist_ok=True)
        results[phase] = {k: v for k, v in evaluate(model, data, cfg, phase_dir).items() if k != "examples"}
    results["data"] = {"data_dir": cfg["data"]["data_dir"], "utterances": int(len(manifest)),
                       "resampled_from_hz": rates}
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _RUN_DIR.value or not _DATA_DIR.value:
        print("error: --run_dir and --data_dir are required", file=sys.stderr)
        sys.exit(2)
    try:
        results = evaluate_folder(_RUN_DIR.value, _DATA_DIR.value, [p for p in _PHASES.value.split(",") if p],
                                  _OUT.value)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    print(f"\n{results['data']['utterances']} utterances of {results['data']['data_dir']}\n")
    print("| phase | WER | CER |\n|---|---|---|")
    for phase, m in results.items():
        if phase != "data":
            print(f"| {phase} | {m['test_wer']:.4f} | {m['test_cer']:.4f} |")


if __name__ == "__main__":
    from kws_quant.usage import print_help_and_exit, wants_help

    if wants_help(sys.argv):
        print_help_and_exit(sys.argv)
    app.run(main)
