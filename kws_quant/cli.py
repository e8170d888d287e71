"""Moved to :mod:`kws_quant.experiments.cli` (the experiment runners' layer); this path re-exports it."""
from kws_quant.experiments.cli import *  # noqa: F401,F403
