"""The per-frame front end of a split LiteRT export: what a streaming device computes once per feature frame.

``to_tflite(model, path, split_front_end=True)`` cuts the model at its input quantizer. The leading per-frame
layers (a per-channel batch-norm such as the KWS model's per-mel ``bn_in``; an ``AveragePooling1D`` over time with
strides = pool size) move out of the ``.tflite`` into a :class:`FrontEnd`, saved next to it as
``<name>.front_end.json``; the ``.tflite`` then takes the **int8** window the input quantizer produced
(``[1, frames / pool, n_mels]``) and has no float ops at all. A device runs the front end as frames arrive (per
frame: ``n_mels`` multiply-adds, one running sum per pool, one rounding) into an int8 ring buffer, and the model
once per window on that buffer, instead of normalising, pooling and quantizing the whole window on every invoke.

:meth:`FrontEnd.apply` is the reference: float windows ``[n, frames, n_mels]`` → what the model's input quantizer
outputs, computed in the Keras model's order (normalise, pool, then the input quantizer's rounding,
:func:`quantize_codes`).
:meth:`FrontEnd.frames` is the streaming form (one output frame per input frame, each window a strided slice of
them: :meth:`FrontEnd.window`), with the same values.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

__all__ = ["FrontEnd", "features_dict", "front_end_path", "load_front_end", "quantize_codes"]

FORMAT = "kws_quant.front_end/1"


def features_dict(features) -> dict | None:
    """``FrontEnd.features`` from a :class:`kws_quant.features.FeatureConfig`, its dict, or ``None``."""
    if features is None or isinstance(features, dict):
        return features
    if dataclasses.is_dataclass(features):
        return dataclasses.asdict(features)
    raise TypeError(f"features must be a FeatureConfig or a dict, got {type(features).__name__}")


def quantize_codes(x, scale: float, zero_point: int, narrow_range: bool = False) -> np.ndarray:
    """Float values → the int8 codes the Keras 8-bit input quantizer gives on the grid ``(scale, zero_point)``.

    Asymmetric grids repeat ``fake_quant_with_min_max_vars``' float32 steps: clamp to the nudged range
    ``[-z·s, (255 - z)·s]`` (``z = zero_point + 128``), then ``floor((x - min)·(1/s) + 0.5)``. Symmetric grids
    (``narrow_range``) are ``clip(round(x / s), ±127)``, rounding half to even, as ``LinearQuantizer`` does. A value
    within a float32 rounding error of a step boundary may get the neighbouring code (TF's eager and XLA fake-quant
    kernels differ from each other there too)."""
    s = np.float32(scale)
    if narrow_range:  # LinearQuantizer's symmetric grid: clip(round(x / s), ±127)
        return np.clip(np.round(np.asarray(x, np.float32) / s), -127, 127).astype(np.int8)
    z = int(zero_point) + 128
    lo, hi = np.float32(-z) * s, np.float32(255 - z) * s
    clamped = np.minimum(np.maximum(np.asarray(x, np.float32), lo), hi)
    rounded = np.floor((clamped - lo) * (np.float32(1.0) / s) + np.float32(0.5))
    return (rounded - np.float32(128)).astype(np.int8)


@dataclasses.dataclass
class FrontEnd:
    """Per-frame steps in model order, then (int8 exports) the input quantizer's grid.

    Attributes:
        steps: ``{"op": "affine", "layer": name, "gain": [C], "offset": [C]}`` (``y = x·gain + offset`` per channel)
            or ``{"op": "average_pool", "layer": name, "size": p}`` (mean of ``p`` consecutive frames, stride ``p``,
            trailing frames that do not fill a pool dropped, as Keras' 'valid' pooling).
        scale, zero_point: the int8 grid of the model's input quantizer; ``None`` for a float export.
        narrow_range: the input quantizer is symmetric (codes -127..127).
        input_shape, output_shape: one window in and out, without the batch axis.
        features: the log-mel settings the frames are computed with (:class:`kws_quant.features.FeatureConfig`'s
            fields: sample rate, window, hop, mels, …), or ``None`` when the exporter was not told them (the
            training run's deployment step always writes them).
    """

    steps: list
    input_shape: tuple
    output_shape: tuple
    scale: float | None = None
    zero_point: int | None = None
    narrow_range: bool = False
    features: dict | None = None

    def apply(self, windows) -> np.ndarray:
        """Float windows ``[n, *input_shape]`` (or one window) → ``[n, *output_shape]``: int8 codes, or float32 when
        the export is float. Raises ``ValueError`` for windows of another shape."""
        x = np.asarray(windows, np.float32)
        x = x[None] if x.ndim == len(self.input_shape) else x
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"front end: windows must have shape [n, {', '.join(map(str, self.input_shape))}], got "
                             f"{tuple(x.shape)}")
        for step in self.steps:
            if step["op"] == "affine":
                x = _affine(x, step)
            else:
                p = int(step["size"])
                usable = (x.shape[1] // p) * p
                x = x[:, :usable].reshape(x.shape[0], usable // p, p, *x.shape[2:]).mean(axis=2, dtype=np.float32)
        return self._quantize(x)

    def frames(self, features) -> np.ndarray:
        """A feature stream ``[T, n_mels]`` → one output frame per input frame from the ``p``-th on:
        ``[T - p + 1, n_mels]`` (``p`` the pool size, 1 without pooling), what a device computes as frames arrive
        and keeps in its ring buffer. The window starting at frame ``t`` is ``out[t : t + p·frames_out : p]`` and
        equals ``apply`` on ``features[t : t + window]``. At most one pooling step."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1:] != tuple(self.input_shape[1:]):
            raise ValueError(f"front end: features must have shape [frames, {', '.join(map(str, self.input_shape[1:]))}]"
                             f", got {tuple(x.shape)}")
        pools = [s for s in self.steps if s["op"] == "average_pool"]
        if len(pools) > 1:
            raise ValueError("front end: frames() supports at most one pooling step")
        for step in self.steps:
            if step["op"] == "affine":
                x = _affine(x, step)
            else:
                view = np.lib.stride_tricks.sliding_window_view(x, int(step["size"]), axis=0)  # [T-p+1, C, p]
                x = np.moveaxis(view, -1, 1).mean(axis=1, dtype=np.float32)
        return self._quantize(x)

    def window(self, frame_outputs, start: int) -> np.ndarray:
        """The model input of the window starting at frame ``start`` from :meth:`frames`' output."""
        p = next((int(s["size"]) for s in self.steps if s["op"] == "average_pool"), 1)
        n = self.output_shape[0]
        out = np.asarray(frame_outputs)[start:start + p * n:p]
        if len(out) != n:
            raise ValueError(f"front end: a window starting at frame {start} needs {p * (n - 1) + 1} frame outputs "
                             f"from there, {len(frame_outputs) - start} are left")
        return out

    def _quantize(self, x) -> np.ndarray:
        if self.scale is None:
            return x.astype(np.float32)
        return quantize_codes(x, self.scale, self.zero_point, self.narrow_range)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "steps": self.steps, "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape), "scale": self.scale, "zero_point": self.zero_point,
                "narrow_range": self.narrow_range, **({"features": self.features} if self.features else {})}

    def save(self, path) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
        return os.fspath(path)

    @classmethod
    def from_dict(cls, d: dict, where: str = "front end") -> "FrontEnd":
        """The front end described by ``d`` (what :meth:`to_dict` writes), checked field by field first: anything
        else (a missing field or one of another type, an unknown field, a non-finite number, a gain that does not
        match the channels, shapes that do not follow from the steps) raises ``ValueError`` naming ``where`` and
        the field."""
        _check_dict(d, where)
        return cls(list(d["steps"]), tuple(d["input_shape"]), tuple(d["output_shape"]), d.get("scale"),
                   d.get("zero_point"), d.get("narrow_range", False), d.get("features"))


_FIELDS = {"format", "steps", "input_shape", "output_shape", "scale", "zero_point", "narrow_range", "features"}
_OPTIONAL = {"scale", "zero_point", "narrow_range", "features"}  # null, null, false: a float export; features: unknown
_STEP_FIELDS = {"affine": {"op", "layer", "gain", "offset"}, "average_pool": {"op", "layer", "size"}}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_dict(d, where: str) -> None:
    """Raise ``ValueError`` ``"<where>: field ... "`` unless ``d`` is a valid front-end description."""
    def bad(field, value, expected):
        raise ValueError(f"{where}: field {field!r} is {value!r}; expected {expected}")

    if not isinstance(d, dict):
        raise ValueError(f"{where}: must be a JSON object with the fields {sorted(_FIELDS)}, not "
                         f"{type(d).__name__}")
    if d.get("format") != FORMAT:
        raise ValueError(f"{where}: field 'format' is {d.get('format')!r}, expected {FORMAT!r}")
    missing, unknown = sorted(_FIELDS - _OPTIONAL - set(d)), sorted(map(str, set(d) - _FIELDS))
    if missing:
        raise ValueError(f"{where}: field {missing[0]!r} is missing")
    if unknown:
        raise ValueError(f"{where}: field {unknown[0]!r} is not part of {FORMAT}")
    for key in ("input_shape", "output_shape"):
        v = d[key]
        if not (isinstance(v, list) and v and all(_is_int(n) and n >= 1 for n in v)):
            bad(key, v, "a non-empty list of positive integers")
    if not isinstance(d["steps"], list):
        bad("steps", d["steps"], "a list")
    channels, frames = d["input_shape"][-1], d["input_shape"][0]
    for i, step in enumerate(d["steps"]):
        if not isinstance(step, dict):
            raise ValueError(f"{where}: steps[{i}] is {step!r}; expected an object")
        op = step.get("op")
        if not isinstance(op, str) or op not in _STEP_FIELDS:
            raise ValueError(f"{where}: steps[{i}] field 'op' is {op!r}; expected 'affine' or 'average_pool'")
        extra = sorted(map(str, set(step) - _STEP_FIELDS[op]))
        missing = sorted(_STEP_FIELDS[op] - {"layer"} - set(step))
        if extra or missing:
            raise ValueError(f"{where}: steps[{i}] ({op}) field {(extra or missing)[0]!r} is "
                             f"{'not part of the step' if extra else 'missing'}")
        if not isinstance(step.get("layer", ""), str):
            bad(f"steps[{i}].layer", step["layer"], "a layer name (a string)")
        if op == "affine":
            for key in ("gain", "offset"):
                v = step[key]
                if not (isinstance(v, list) and len(v) == channels and all(map(_is_number, v))):
                    bad(f"steps[{i}].{key}", v if not isinstance(v, list) or len(v) <= 8 else f"[{len(v)} values]",
                        f"a list of {channels} finite numbers (one per channel of input_shape)")
        else:
            if not (_is_int(step["size"]) and 1 <= step["size"] <= frames):
                raise ValueError(f"{where}: steps[{i}] (average_pool) field 'size' is {step['size']!r}; expected "
                                 f"a positive integer <= the frames in ({frames})")
            frames //= step["size"]
    expected = [frames, *d["input_shape"][1:]]
    if d["output_shape"] != expected:
        bad("output_shape", d["output_shape"], f"{expected} (input_shape {d['input_shape']} through the steps)")
    scale, zero_point = d.get("scale"), d.get("zero_point")
    if scale is None or zero_point is None:
        if (scale, zero_point) != (None, None):
            raise ValueError(f"{where}: fields 'scale' and 'zero_point' are {scale!r} and {zero_point!r}; expected "
                             "both null (a float export) or both set (int8)")
    else:
        if not (_is_number(scale) and scale > 0):
            bad("scale", scale, "a finite number > 0")
        if not (_is_int(zero_point) and -128 <= zero_point <= 127):
            bad("zero_point", zero_point, "an integer in [-128, 127]")
    if not isinstance(d.get("narrow_range", False), bool):
        bad("narrow_range", d["narrow_range"], "true or false")
    if d.get("features") is not None:
        from kws_quant.features import FeatureConfig  # only here: the front end itself needs NumPy alone

        f = d["features"]
        if not isinstance(f, dict):
            bad("features", f, "an object of log-mel settings (kws_quant.features.FeatureConfig fields)")
        try:
            config = FeatureConfig(**f)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: field 'features' is not a FeatureConfig: {e}") from None
        if config.n_mels != d["input_shape"][-1]:
            bad("features.n_mels", config.n_mels, f"{d['input_shape'][-1]}, the channels of input_shape")


def _affine(x, step: dict) -> np.ndarray:
    """``x·gain + offset`` per channel (last axis), in float32 as the Keras batch-norm computes it."""
    return x * np.asarray(step["gain"], np.float32) + np.asarray(step["offset"], np.float32)


def front_end_path(tflite_path) -> str:
    """``model.tflite`` → ``model.front_end.json`` (where a split export writes its front end)."""
    return os.path.splitext(os.fspath(tflite_path))[0] + ".front_end.json"


def load_front_end(path) -> FrontEnd:
    """The front end saved by a split export: its ``.front_end.json``, or the ``.tflite`` it belongs to."""
    path = os.fspath(path)
    if not path.endswith(".json"):
        path = front_end_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no front end here (written by to_tflite(..., split_front_end=True))")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return FrontEnd.from_dict(d, where=path)
