"""Deployment artifacts of a trained QAT model, checked on held-out data: what the main job writes per QAT phase.

:func:`export_for_deployment` writes, into one directory:

- ``int8.tflite``: the LiteRT int8 export (:func:`kws_quant.export.tflite.to_tflite`, exact integer codes);
- ``int4.tflite``: the same with ≤4-bit kernels packed as INT4 (only when the model has such kernels);
- ``core.tflite`` + ``core.front_end.json``: the all-int8 model with its per-frame front end split off
  (``split_front_end=True``);
- ``<preset>/payload.bin`` + ``manifest.json``: the bit-packed NNA/ARM payload (:func:`kws_quant.export.packing.pack`)
  for each preset;

and returns what it measured: file sizes (and the float32 export's, for the ratio), the LiteRT int8 model's test
accuracy next to the Keras model's, the share of logits within one int8 output step of the Keras model, the worst
error in steps and how often the two agree on the class.

A model with a frame-synchronous streaming form (the zoo's ``dscnn``, ``tcresnet``, ``crnn``:
:func:`kws_quant.models.stream_state.to_streaming`) is exported in that form instead
(:func:`kws_quant.export.tflite.to_tflite_streaming`):

- ``stream_int8.tflite`` + ``stream_int8.stream.json``: one 20-ms hop in, logits and int8 state tensors out;
- ``window_int8.tflite``: the same ops over a whole window (what re-running the window costs; not for the CRNN,
  whose window is its stream run over the window's hops: ``window_skipped`` says so);
- ``stream_int4.tflite`` (``int4=True``, a model with ≤4-bit kernels): the same with those kernels packed INT4;
- ``stream_core.tflite`` + ``stream_core.front_end.json`` (``split_front_end=True``): the streaming model with
  int8 frames in and no float op, its per-mel normalisation in the front end;
- the packed payloads as above;

and the checks stream every test window hop by hop from the zero state through the LiteRT file and the Keras
streaming model (``within_one_step`` over the logits of every step; accuracies from each window's last step). A
``QuantLSTM`` (the CRNN) exports with float32 ``h``/``c`` state and hybrid projections
(:mod:`kws_quant.export.tflite.stream_export`).
"""
from __future__ import annotations

import os

import numpy as np

from kws_quant.export import tflite as T
from kws_quant.export.front_end import load_front_end

__all__ = ["export_for_deployment"]


def export_for_deployment(model, out_dir: str, calibration, test_windows, test_labels=None, *, int4: bool = True,
                          split_front_end: bool = True, pack_presets=("nna-5bit",),
                          output_margin: float = 0.25, features=None) -> dict:
    """Export ``model`` (a stage-2 QAT KWS model) into ``out_dir`` and check the int8 export on ``test_windows``.

    Args:
        calibration: float windows ``[n, frames, n_mels]`` for the output range (e.g. validation windows).
        test_windows: float windows ``[m, frames, n_mels]`` the checks run on; ``test_labels`` ``[m]`` class ids
            (optional: accuracies are left out without them).
        int4, split_front_end: also write ``int4.tflite`` / ``core.tflite`` + ``core.front_end.json``.
        pack_presets: :mod:`kws_quant.export.packing` presets to write payloads for.
        output_margin: widen the logits' int8 range (calibrated on ``calibration``) by this share of its span on
            each side: unseen data (a new speaker) gives logits beyond the calibration's, which would saturate.
        features: the :class:`kws_quant.features.FeatureConfig` the windows were computed with; written into the
            split exports' front-end files (``FrontEnd.features``), so a device knows the sample rate, window and
            hop its frames need.

    Returns:
        A JSON-ready dict: ``int8_bytes``, ``float32_bytes``, ``int8_vs_float32``, ``int4_bytes`` / ``core_bytes``
        (``None`` when not written), ``packed_bytes`` ``{preset: bytes}``, ``within_one_step`` (share of logits),
        ``max_error_steps``, ``saturated`` (share of the Keras logits beyond the int8 output range),
        ``argmax_agreement``, ``keras_test_accuracy`` and ``int8_test_accuracy`` (with labels),
        ``core_within_one_step``, ``test_windows``.
    """
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # the converter logs every SavedModel it writes at INFO
    try:
        return _export(model, out_dir, calibration, test_windows, test_labels, int4, split_front_end, pack_presets,
                       output_margin, features)
    finally:
        absl_logging.set_verbosity(verbosity)


def _packed(model, out_dir, pack_presets) -> dict:
    from kws_quant.export.packing import pack

    return {preset: int(pack(model, os.path.join(out_dir, preset), preset=preset)["payload_nbytes"])
            for preset in pack_presets}


def _export_stream(model, out_dir, calibration, x, test_labels, int4, split_front_end, pack_presets,
                   output_margin, features) -> dict:
    from kws_quant.export.tflite.stream_export import check_streaming

    out = {"form": "streaming", "test_windows": int(len(x))}
    path = T.to_tflite_streaming(model, os.path.join(out_dir, "stream_int8.tflite"), calibration,
                                 output_margin=output_margin)
    f32 = T.to_tflite_streaming(model, os.path.join(out_dir, "stream_float32.tflite"), quantize=False)
    out["int8_bytes"], out["float32_bytes"] = os.path.getsize(path), os.path.getsize(f32)
    os.remove(f32)  # only its size is needed
    out["int8_vs_float32"] = out["float32_bytes"] / out["int8_bytes"]
    check = check_streaming(model, path, x)
    lite, keras_logits = check.pop("litert_last"), check.pop("keras_last")
    out.update(check)
    try:
        window = T.to_tflite_window(model, os.path.join(out_dir, "window_int8.tflite"), calibration,
                                    output_margin=output_margin)
    except T.UnsupportedModelError as e:  # an LSTM: its window is its stream over the window's hops
        out.update(window_bytes=None, window_within_one_step=None, window_skipped=str(e))
    else:
        keras_window = np.concatenate([np.asarray(model(x[i:i + 512], training=False))
                                       for i in range(0, len(x), 512)])
        werr = np.abs(T.run_tflite(window, x) - keras_window) / T.output_step(window)
        out.update(window_bytes=os.path.getsize(window), window_within_one_step=float(np.mean(werr <= 1.0)))
    if test_labels is not None:
        y = np.asarray(test_labels)
        out.update(keras_test_accuracy=float(np.mean(keras_logits.argmax(1) == y)),
                   int8_test_accuracy=float(np.mean(lite.argmax(1) == y)))
    out.update(int4_bytes=None, int4_within_one_step=None, core_bytes=None, core_within_one_step=None)
    if int4:
        p4 = T.to_tflite_streaming(model, os.path.join(out_dir, "stream_int4.tflite"), calibration,
                                   output_margin=output_margin, int4=True)
        if any(d["weight_type"] == "INT4" for d in T.read_linear_ops(p4)):
            out.update(int4_bytes=os.path.getsize(p4), int4_within_one_step=check_streaming(model, p4, x)[
                "within_one_step"])
        else:  # no kernel of ≤ 4 bits: the file would be stream_int8.tflite again
            os.remove(p4)
    if split_front_end:  # checked like the stream: float frames through its front end, then the int8 model
        core = T.to_tflite_streaming(model, os.path.join(out_dir, "stream_core.tflite"), calibration,
                                     output_margin=output_margin, split_front_end=True, features=features)
        out.update(core_bytes=os.path.getsize(core),
                   core_within_one_step=check_streaming(model, core, x)["within_one_step"])
    out["packed_bytes"] = _packed(model, out_dir, pack_presets)
    return out


def _export(model, out_dir, calibration, test_windows, test_labels, int4, split_front_end, pack_presets,
            output_margin, features) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    from kws_quant.models.stream_state import is_streamable

    if is_streamable(model):
        return _export_stream(model, out_dir, calibration, np.asarray(test_windows, np.float32), test_labels,
                              int4, split_front_end, pack_presets, output_margin, features)
    x = np.asarray(test_windows, np.float32)
    keras_logits = np.concatenate([np.asarray(model(x[i:i + 512], training=False)) for i in range(0, len(x), 512)])
    out = {"test_windows": int(len(x))}

    kw = dict(output_margin=output_margin)
    path = T.to_tflite(model, os.path.join(out_dir, "int8.tflite"), calibration, **kw)
    f32 = T.to_tflite_float(model, os.path.join(out_dir, "float32.tflite"))
    out["int8_bytes"], out["float32_bytes"] = os.path.getsize(path), os.path.getsize(f32)
    os.remove(f32)  # only its size is needed: the float phase has the float model
    out["int8_vs_float32"] = out["float32_bytes"] / out["int8_bytes"]
    lite = T.run_tflite(path, x)
    step, zero = T.output_grid(path)
    err = np.abs(lite - keras_logits) / step
    lo, hi = (-128 - zero) * step, (127 - zero) * step
    out.update(within_one_step=float(np.mean(err <= 1.0)), max_error_steps=float(err.max(initial=0.0)),
               saturated=float(np.mean((keras_logits < lo - step / 2) | (keras_logits > hi + step / 2))),
               argmax_agreement=float(np.mean(lite.argmax(1) == keras_logits.argmax(1))))
    if test_labels is not None:
        y = np.asarray(test_labels)
        out.update(keras_test_accuracy=float(np.mean(keras_logits.argmax(1) == y)),
                   int8_test_accuracy=float(np.mean(lite.argmax(1) == y)))

    out["int4_bytes"] = None
    if int4:
        p4 = T.to_tflite(model, os.path.join(out_dir, "int4.tflite"), calibration, int4=True, **kw)
        if any(d["weight_type"] == "INT4" for d in T.read_linear_ops(p4)):
            out["int4_bytes"] = os.path.getsize(p4)
        else:  # no kernel of ≤ 4 bits: the file would be int8.tflite again
            os.remove(p4)
    out["core_bytes"] = out["core_within_one_step"] = None
    if split_front_end:
        core = T.to_tflite(model, os.path.join(out_dir, "core.tflite"), calibration, split_front_end=True,
                           features=features, **kw)
        core_err = np.abs(T.run_tflite(core, load_front_end(core).apply(x)) - keras_logits) / T.output_step(core)
        out["core_bytes"], out["core_within_one_step"] = os.path.getsize(core), float(np.mean(core_err <= 1.0))
    out["packed_bytes"] = _packed(model, out_dir, pack_presets)
    return out
