"""``--help``, ``--helpshort`` and ``--helpfull`` for the command lines, the way absl tools answer them: the
program's docstring and flags on stdout, exit status 0. (Defines no flag itself, so any module may import it.)"""
from __future__ import annotations

import os
import sys

from absl import flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def wants_help(argv) -> bool:
    """True when ``argv`` (program name first) asks for help."""
    return any(a.split("=")[0] in HELP_FLAGS for a in argv[1:])


def print_help_and_exit(argv, modules=(), flag_values=None) -> None:
    """Print the ``__main__`` docstring and the flags (``--helpfull``: all; else the main module's and those of
    ``modules``), then exit 0."""
    fv = flag_values or flags.FLAGS
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    if any(a.lstrip("-").split("=")[0] == "helpfull" for a in argv[1:]):
        usage = fv.get_help()
    else:
        usage = "\n\n".join(h for h in [fv.main_module_help(), *(fv.module_help(m) for m in modules)] if h.strip())
        usage += "\n\nTry --helpfull to get a list of all flags."
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = f"python -m {spec.name}" if spec is not None else os.path.basename(sys.argv[0])
    print(f"{doc}\n\nusage: {name} [flags]\n\n{usage}".strip())
    sys.exit(0)
