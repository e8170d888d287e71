# Sourced by the quick-start scripts: make .venv with Python 3.11 and install the project into it (once per change of
# setup.py). Set KWS_PYTHON to choose the interpreter and KWS_EXTRAS (e.g. dev,litert) to add setup.py extras.
# Takes no arguments: a sourced file sees its caller's arguments, which are flags for the caller's command.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${KWS_PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]} at {sys.executable}; set KWS_PYTHON"'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
EXTRAS="${KWS_EXTRAS:-}"
STAMP=".venv/.installed-$(cat setup.py | sha1sum | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# 3: also hides the start-up "failed call to cuInit" line on machines without CUDA (not an error for a CPU run)
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
