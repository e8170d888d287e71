#!/usr/bin/env bash
# Quick start, command 2: install what the tests need into .venv, then run the whole test suite.
KWS_EXTRAS=dev,litert,tfmot
source "$(dirname "$0")/env.sh"
exec python -m pytest -n 2 --dist loadfile -q --strict-markers -W ignore::DeprecationWarning "$@" tests
