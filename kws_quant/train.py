r"""Train a float KWS model and its two-stage QAT twins, evaluate them, and write a run directory.

    python -m kws_quant.train                                   # synthetic default (configs/kws_synthetic.py)
    python -m kws_quant.train --config=configs/kws_fsdd.py --data_dir=../shared/data/fsdd
    python -m kws_quant.train --config.train.float_epochs=3 --config.qat.recipes="('tanh4','tanh8')"

Phases: ``float`` (stage 0 only), then one phase per recipe in ``config.qat.recipes``: initialised from the float
model, ``stage1_epochs`` with weight quantizers, then ``stage2_epochs`` with everything quantized (one ``fit``).
Killed and restarted with the same command, it skips finished phases and resumes the current one from its last
completed epoch (see :mod:`kws_quant.training`).
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "kws_synthetic.py")

_CONFIG = None  # defined by run(): ml_collections applies --config.* overrides (and finds typos) at definition
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (or CSV file); overrides config.data.data_dir.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config.name>).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                              "tf.distribute strategy.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices (for mirrored).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_files", False, "Skip unreadable audio with a printed summary.")
_VERBOSE = flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line/epoch).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an input error.")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)
"""Bad input (data, config values): reported as one line naming the problem, exit status 2."""


def resolved_config(config) -> dict:
    """The config as a plain dict with the command-line data dir applied."""
    cfg = config.to_dict()
    if _DATA_DIR.value is not None:
        cfg["data"]["data_dir"] = _DATA_DIR.value
    return cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from kws_quant.training import configure_cpu_devices

    configure_cpu_devices(_CPU_DEVICES.value)  # before TensorFlow touches a device
    from kws_quant import kws_experiment

    try:
        cfg = resolved_config(_CONFIG.value)
    except OSError as e:  # a missing or broken config file surfaces on first access
        fail(ValueError(f"cannot load the --config file: {_unquote(e)}"))
    workdir = _WORKDIR.value or os.path.join("runs", cfg["name"])
    start = time.perf_counter()
    try:
        summary = kws_experiment.run(cfg, workdir, strategy=_STRATEGY.value, skip_bad_files=_SKIP_BAD.value,
                                     verbose=_VERBOSE.value)
    except USER_ERRORS as e:
        if _TRACEBACK.value:
            raise
        fail(e)
    print(kws_experiment.format_summary(summary, workdir, time.perf_counter() - start))


def fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _unquote(error: Exception) -> str:
    """ml_collections nests reprs in its messages; make them one readable line."""
    text = str(error).strip().strip("'").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    return " ".join(text.split())


def run():
    """Console entry point ``kws-quant-train``."""
    global _CONFIG
    try:
        _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (ml_collections).",
                                                  lock_config=True)
        flags.FLAGS(sys.argv)
    except AttributeError as e:  # ml_collections: an override names a key the config does not have
        fail(ValueError(f"unknown config key in a --config.* override: {_unquote(e)}"))
    except (flags.Error, KeyError, ValueError, OSError) as e:
        fail(ValueError(f"bad command line: {_unquote(e)}"))
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
