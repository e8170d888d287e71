"""Moved to :mod:`kws_quant.experiments.training` (the experiment runners' layer); this path re-exports it."""
from kws_quant.experiments.training import *  # noqa: F401,F403
