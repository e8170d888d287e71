#!/usr/bin/env bash
# Quick start, command 1: install into .venv, then run the main job (synthetic keyword data unless --data_dir is
# given): float + 4-bit two-stage QAT models, evaluated; prints where the results are. Flags go to kws_quant.train.
source "$(dirname "$0")/env.sh"
exec python -m kws_quant.train "$@"
