r"""Train a float KWS model and its two-stage QAT twins, evaluate them, and write a run directory.

    python -m kws_quant.train                                   # synthetic default (configs/kws_synthetic.py)
    python -m kws_quant.train --config=configs/kws_fsdd.py --data_dir=../shared/data/fsdd
    python -m kws_quant.train --config.train.float_epochs=3 --config.qat.recipes="('tanh4','tanh8')"

Phases: ``float`` (stage 0 only), then one phase per recipe in ``config.qat.recipes``: initialised from the float
model, ``stage1_epochs`` with weight quantizers, then ``stage2_epochs`` with everything quantized (one ``fit``).
Killed and restarted with the same command, it skips finished phases and resumes the current one from its last
completed epoch (see :mod:`kws_quant.experiments.training`).
"""
from __future__ import annotations

import os
import sys

from absl import flags

from kws_quant.experiments import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "kws_synthetic.py")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_files", False, "Skip unreadable audio with a printed summary.")


def run():
    """Console entry point ``kws-quant-train``."""
    cli.run_experiment(_DEFAULT_CONFIG, "kws_quant.experiments.kws", lambda: {"skip_bad_files": _SKIP_BAD.value})


if __name__ == "__main__":
    sys.exit(run())
