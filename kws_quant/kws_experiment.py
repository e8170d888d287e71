"""Moved to :mod:`kws_quant.experiments.kws` (the experiment runners' layer); this path re-exports it."""
from kws_quant.experiments.kws import *  # noqa: F401,F403
