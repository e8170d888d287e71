#!/usr/bin/env bash
# Quick start, command 2: install what the tests need into .venv, then run the whole test suite.
source "$(dirname "$0")/env.sh" dev,litert,tfmot
exec python -m pytest -n 2 --dist loadfile -q -W ignore::DeprecationWarning "$@" tests
