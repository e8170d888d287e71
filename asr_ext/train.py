r"""Train a float RNN-T and its two-stage QAT twins, decode the test split (WER/CER), write a run directory.

    python -m asr_ext.train                                    # synthetic eSpeak corpus (configs/asr_synthetic.py)
    python -m asr_ext.train --config=configs/asr_fsdd.py --data_dir=../shared/data/fsdd
    python -m asr_ext.train --config.train.float_epochs=3 --config.qat.recipes="('tanh4','tanh8')"

Phases: ``float``, then one per recipe in ``config.qat.recipes`` (initialised from the float model; ``stage1_epochs``
with weight quantizers, then ``stage2_epochs`` fully quantized, in one ``fit``). Killed and restarted with the same
command, it skips finished phases and resumes the current one from its last completed epoch
(:mod:`kws_quant.experiments.training`). Bad input (config values, data, transcripts) ends with one ``error: ...`` line and exit
status 2 (``--traceback`` shows the traceback).
"""
from __future__ import annotations

import os
import sys

from kws_quant.experiments import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "asr_synthetic.py")


def run():
    """Console entry point ``asr-ext-train``."""
    cli.run_experiment(_DEFAULT_CONFIG, "asr_ext.experiments.asr")


if __name__ == "__main__":
    sys.exit(run())
