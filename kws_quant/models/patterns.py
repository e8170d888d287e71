"""Layer-name patterns: the one precedence rule of recipe overrides (:func:`kws_quant.models.recipes.spec_for`) and
per-layer maps (:mod:`asr_ext.quant.bits_map`).

Patterns use ``fnmatch`` syntax, case-sensitive. When several patterns match a layer, the *most specific* wins:

1. a pattern equal to the layer name (no wildcard) beats any wildcard pattern;
2. among wildcard patterns, the one with more literal (non-wildcard) characters wins (``"dense_*"`` over ``"*"``);
3. on a tie, the pattern written first wins.

So ``{"dense_in": 1, "*": 4}`` and ``{"*": 4, "dense_in": 1}`` mean the same. :func:`escape_pattern` gives the pattern
that matches exactly one name (its ``*``, ``?`` and ``[`` bracketed), which then counts as an exact name.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

_ESCAPED = re.compile(r"\[([^\]!])\]")  # "[*]", "[?]", "[[]" or "[x]": one literal character
_WILDCARDS = re.compile(r"[*?]|\[[^\]]*\]")


def escape_pattern(name: str) -> str:
    """An ``fnmatch`` pattern that matches exactly ``name`` (``*``, ``?`` and ``[`` bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def specificity(pattern: str) -> tuple[bool, int]:
    """``(is an exact name, number of literal characters)``; escaped single characters count as literals."""
    parts = _ESCAPED.split(pattern)  # even items: raw text, odd items: escaped literal characters
    raw = "".join(parts[0::2])
    literal = len(_WILDCARDS.sub("", raw)) + len(parts[1::2])
    return (_WILDCARDS.search(raw) is None, literal)


def by_precedence(patterns: Iterable[str]) -> list[str]:
    """``patterns`` (in the order written) sorted so that the one that wins comes last."""
    patterns = list(patterns)
    order = sorted(range(len(patterns)), key=lambda i: (*specificity(patterns[i]), -i))
    return [patterns[i] for i in order]


def matches(pattern: str, name: str) -> bool:
    """Whether layer ``name`` matches ``pattern`` (``fnmatch``, case-sensitive)."""
    return fnmatch.fnmatchcase(name, pattern)
