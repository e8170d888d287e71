"""Moved to :mod:`asr_ext.experiments.asr` (the experiment runners' layer); this path re-exports it."""
from asr_ext.experiments.asr import *  # noqa: F401,F403
