"""The absl command line shared by the training scripts (``kws_quant.train``, ``asr_ext.train``).

An experiment module provides ``run(cfg: dict, workdir: str, strategy=, verbose=, **kwargs) -> summary`` and
``format_summary(summary, workdir, seconds) -> str``. The experiment config is an ml_collections file (``--config``)
with ``--config.a.b=value`` overrides; bad input ends with one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from kws_quant.usage import print_help_and_exit, wants_help

DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (FSDD, Speech Commands or LibriSpeech layout) or a "
                               "CSV manifest; overrides config.data.data_dir.")
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config.name>).")
STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                             "tf.distribute strategy (multi_worker reads TF_CONFIG).")
CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices (for mirrored).")
VERBOSE = flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line/epoch).")
TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an input error.")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError)
"""Bad input (data, config values): reported as one line naming the problem, exit status 2."""


WORKER_LOST_EXIT = 75
"""Exit status when a multi-worker run lost a peer (EX_TEMPFAIL: restart every worker with the same command)."""


def fail(error: Exception) -> None:
    """Print ``error: <message>`` on one line to stderr and exit with status 2."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)


def unquote(error: Exception) -> str:
    """ml_collections nests reprs in its messages; make them one readable line (a message that is one quoted repr
    loses its outer quotes; quotes inside it, e.g. around a flag name, are kept)."""
    text = str(error).strip()
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]
    text = text.replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    return " ".join(text.split())


def run_experiment(default_config: str, experiment_module: str,
                   run_kwargs: Callable[[], dict] = dict) -> None:
    """Parse the command line, then run ``experiment_module`` and print its summary.

    ``run_kwargs`` returns the script's own flag values (read after parsing) as extra ``run`` arguments.
    """
    try:
        config = config_flags.DEFINE_config_file("config", default_config, "Experiment config file (ml_collections).",
                                                 lock_config=True)
        if wants_help(sys.argv):
            print_help_and_exit(sys.argv, modules=(__name__,))
        remaining = flags.FLAGS(sys.argv)
    except AttributeError as e:  # ml_collections: an override names a key the config does not have
        fail(ValueError(f"unknown config key in a --config.* override: {unquote(e)}"))
    except (flags.Error, KeyError, ValueError, OSError) as e:
        fail(ValueError(f"bad command line: {unquote(e)}"))

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        from kws_quant.distributed import is_lost_worker, make_strategy
        from kws_quant.experiments.training import configure_cpu_devices

        configure_cpu_devices(CPU_DEVICES.value)  # before TensorFlow touches a device
        try:  # before any TensorFlow op: multi-worker collectives are configured at start-up
            strategy = make_strategy(STRATEGY.value)
        except ValueError as e:
            fail(e)
        experiment = importlib.import_module(experiment_module)
        try:
            cfg = config.value.to_dict()
        except OSError as e:  # a missing or broken config file surfaces on first access
            fail(ValueError(f"cannot load the --config file: {unquote(e)}"))
        if DATA_DIR.value is not None:
            cfg["data"]["data_dir"] = DATA_DIR.value
        workdir = WORKDIR.value or os.path.join("runs", cfg["name"])
        start = time.perf_counter()
        try:
            summary = experiment.run(cfg, workdir, strategy=strategy, verbose=VERBOSE.value, **run_kwargs())
        except USER_ERRORS as e:
            if TRACEBACK.value:
                raise
            fail(e)
        except Exception as e:  # noqa: BLE001 - only a lost peer is turned into a message; the rest re-raises
            if TRACEBACK.value or not is_lost_worker(e, strategy):
                raise
            print(f"error: multi-worker training lost a peer ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "restart every worker with the same command: the run resumes from its last completed epoch",
                  file=sys.stderr)
            sys.exit(WORKER_LOST_EXIT)
        print(experiment.format_summary(summary, workdir, time.perf_counter() - start))

    # Parsed once: a second parse (app.run's own) would load the --config file again and define its --config.*
    # override flags twice (absl DuplicateFlagError when a config file and an override are both given).
    app.run(main, flags_parser=lambda _argv: remaining)
