"""The one quantizer registry shared by ``kws_quant`` and ``asr_ext``: ``get``/``serialize``/``deserialize``.

Specs accepted by :func:`get`:
  - ``None`` → ``None`` (float);
  - a quantizer instance → itself;
  - a name, ``"tanh"``, or a call with keyword arguments, ``"tanh(bits=5, mode='symmetric', per_channel=True)"``,
    parsed with :mod:`ast` (literals only, never ``eval``);
  - a dict: ``{"class_name": "tanh", "config": {...}}`` (what :func:`serialize` writes) or ``{"name": "tanh", ...}``.
"""
from __future__ import annotations

import ast
import inspect
import math
import numbers

_REGISTRY: dict[str, type] = {}


def register_quantizer(cls=None, *, name: str | None = None):
    """Class decorator adding a quantizer class to the registry under ``name`` (default ``cls.name``).

    ``asr_ext`` uses it to add its own quantizers, which then work everywhere a spec is accepted.
    """

    def wrap(cls):
        key = (name or cls.name).lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"quantizer name {key!r} is already registered by {_REGISTRY[key].__qualname__}")
        _REGISTRY[key] = cls
        return cls

    return wrap(cls) if cls is not None else wrap


def registered() -> list[str]:
    """Names of every registered quantizer, sorted."""
    return sorted(_REGISTRY)


def _lookup(name) -> type:
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; registered: {', '.join(registered())}")
    return _REGISTRY[name.lower()]


MAX_SPEC_CHARS = 2000
"""Longer spec strings are refused before parsing (a spec is a name and a few literals)."""


def _construct(name: str, kwargs: dict):
    cls = _lookup(name)
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r} for quantizer {cls.name!r}; allowed: {', '.join(params)}")
    for key, value in kwargs.items():
        _check_value(cls.name, key, value, params[key].default)
    return cls(**kwargs)


def _check_value(name: str, key: str, value, default) -> None:
    """Refuse what no quantizer argument is: a non-boolean where the default is a boolean (``per_channel='no'``
    would be truthy), non-finite numbers, containers other than a flat list of numbers, huge strings."""
    where = f"quantizer {name!r}: {key}={_short(value)}"
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"{where} is not allowed; allowed: True or False")
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        raise ValueError(f"{where} is not a finite number")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) > 2 ** 31:
        raise ValueError(f"{where} is out of range")
    if isinstance(value, str) and len(value) > 64:
        raise ValueError(f"{where} is too long for an option name")
    if isinstance(value, (list, tuple)):
        if len(value) > 65536 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                                         for v in value):
            raise ValueError(f"{where} is not allowed: not a sequence of numbers (finite, at most 65536)")
    elif value is not None and not isinstance(value, (bool, numbers.Real, str)):
        raise ValueError(f"{where} is not allowed; expected a number, a string, True/False or None")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(spec: str) -> tuple[str, dict]:
    """``"name(k=v, ...)"`` → ``(name, {k: v})`` with literal values only."""
    text = spec.strip()
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"quantizer spec of {len(text)} characters is longer than {MAX_SPEC_CHARS}: {spec[:40]!r}...")
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: a NUL byte
        raise ValueError(f"cannot parse quantizer spec {spec[:80]!r}: {getattr(e, 'msg', e)}; expected e.g. "
                         "\"tanh(bits=4)\"") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"cannot parse quantizer spec {spec!r}; expected a name or name(key=value, ...)")
    if node.args:
        raise ValueError(f"quantizer spec {spec!r} has positional arguments; write them as key=value")
    kwargs = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"quantizer spec {spec!r}: '**' is not allowed; write key=value")
        if kw.arg in kwargs:
            raise ValueError(f"quantizer spec {spec!r}: argument {kw.arg!r} is given twice")
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):  # TypeError: {[1]: 2}
            raise ValueError(f"quantizer spec {spec!r}: the value of {kw.arg!r} is not a literal "
                             f"(number, string, True/False/None)") from None
    return node.func.id, kwargs


def get(spec):
    """Resolve any accepted spec (see the module docstring) to a quantizer instance or ``None``."""
    from kws_quant.quantizers.base import Quantizer

    if spec is None or isinstance(spec, Quantizer):
        return spec
    if isinstance(spec, str):
        return _construct(*_parse(spec))
    if isinstance(spec, dict):
        return deserialize(spec)
    raise ValueError(f"cannot interpret {spec!r} (a {type(spec).__name__}) as a quantizer; expected None, "
                     "a quantizer, a name or \"name(key=value, ...)\" string, or a config dict")


def serialize(quantizer) -> dict | None:
    """``{"class_name": name, "config": {...}}``, JSON-compatible; ``None`` for ``None``."""
    if quantizer is None:
        return None
    return {"class_name": quantizer.name, "config": quantizer.get_config()}


def deserialize(config: dict | None):
    """Inverse of :func:`serialize`; also accepts a flat ``{"name": ..., **kwargs}`` dict."""
    if config is None:
        return None
    if "class_name" in config:
        extra = set(config) - {"class_name", "config", "module", "registered_name"}
        if extra:
            raise ValueError(f"quantizer config has unexpected keys {sorted(extra)}; expected class_name, config")
        return _construct(config["class_name"], dict(config.get("config") or {}))
    if "name" in config:
        kwargs = dict(config)
        return _construct(kwargs.pop("name"), kwargs)
    raise ValueError(f"quantizer config {config!r} has neither 'class_name' nor 'name'")
