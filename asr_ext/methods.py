"""Moved to :mod:`asr_ext.experiments.methods` (the experiment runners' layer); this path re-exports it."""
from asr_ext.experiments.methods import *  # noqa: F401,F403
