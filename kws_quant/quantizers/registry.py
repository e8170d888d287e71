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


def _construct(name: str, kwargs: dict):
    cls = _lookup(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r} for quantizer {cls.name!r}; allowed: {', '.join(allowed)}")
    return cls(**kwargs)


def _parse(spec: str) -> tuple[str, dict]:
    """``"name(k=v, ...)"`` → ``(name, {k: v})`` with literal values only."""
    text = spec.strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse quantizer spec {spec!r}: {e.msg}; expected e.g. \"tanh(bits=4)\"") from None
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
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
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
