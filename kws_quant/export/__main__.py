"""Export a trained ``.keras`` model to LiteRT (TFLite).

    python -m kws_quant.export --model=run/tanh4/model.keras --out=model.tflite            # int8, exact codes
    python -m kws_quant.export --model=run/tanh4/model.keras --out=model_f32.tflite --float
    python -m kws_quant.export --model=... --out=... --representative=windows.npy --int4
    python -m kws_quant.export --model=... --out=core.tflite --split_front_end   # + core.front_end.json
    python -m kws_quant.export --model=run/tanh4/model.keras --out=stream.tflite --streaming --representative=w.npy

``--representative`` is a ``.npy`` of float feature windows ``[n, frames, mels]`` used to calibrate the output
(logit) range; without it the range comes from synthetic windows (a warning says so). The directory of ``--out`` is
created if it is missing. See :func:`kws_quant.export.tflite.to_tflite` for every option. ``--streaming`` exports a
zoo model (DS-CNN, TC-ResNet) in its streaming form, one hop per invoke with int8 state tensors
(:func:`kws_quant.export.tflite.to_tflite_streaming`; ``stream.stream.json`` beside it); it needs
``--representative``, and takes ``--split_front_end`` (int8 frames in, the per-mel normalisation in
``stream.front_end.json``) and ``--int4``.
"""
from __future__ import annotations

import os
import sys

from absl import flags

from kws_quant.usage import wants_help

# Our own FlagValues, so importing this module next to another absl program (tests, a training script) cannot
# collide with its flag names.
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Path of the trained .keras model (stage-2 QAT for int8 export).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Path of the .tflite to write; its directory is created if missing.",
                    flag_values=FLAGS)
flags.DEFINE_bool("float", False, "Write the float32 model (the benchmark baseline) instead of int8.",
                  flag_values=FLAGS)
flags.DEFINE_string("representative", None, "Optional .npy of float windows [n, frames, mels] to calibrate the "
                    "output range.", flag_values=FLAGS)
flags.DEFINE_enum("io_dtype", "auto", ["auto", "int8", "float32"], "Input/output tensor type of the int8 model.",
                  flag_values=FLAGS)
flags.DEFINE_bool("int4", False, "Pack the weights of dense layers with <= 4-bit kernel quantizers as INT4.",
                  flag_values=FLAGS)
flags.DEFINE_bool("fold_pooling", False, "Fold AveragePooling1D -> Flatten -> dense into the dense kernel (exact, "
                  "larger).", flag_values=FLAGS)
flags.DEFINE_bool("split_front_end", False, "Move the leading per-frame layers (per-mel batch-norm, time pooling) "
                  "out of the model into <out>.front_end.json; the int8 model then takes int8 windows.",
                  flag_values=FLAGS)
flags.DEFINE_bool("strip_names", False, "Drop intermediate tensor names (a few hundred bytes; input/output names "
                  "and the signature stay).", flag_values=FLAGS)
flags.DEFINE_bool("streaming", False, "Export a zoo model's streaming form: one hop per invoke, int8 state tensors "
                  "in and out (needs --representative).", flag_values=FLAGS)
flags.DEFINE_float("output_margin", 0.1, "Widen the calibrated output range by this fraction of its span per side.",
                   flag_values=FLAGS)


class UsageError(ValueError):
    """Bad command line."""


def run(argv) -> str:
    """Parse ``argv`` (``sys.argv`` style, program name first; every flag is reset to its default first) and export;
    returns the written path."""
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(list(argv))
    except flags.Error as e:
        raise UsageError(str(e)) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    if not FLAGS.model or not FLAGS.out:
        raise UsageError("--model and --out are required")
    if not os.path.isfile(FLAGS.model):
        raise UsageError(f"--model={FLAGS.model!r} " + ("is a directory, not a .keras file"
                                                         if os.path.isdir(FLAGS.model) else "does not exist"))
    if os.path.isdir(FLAGS.out) or FLAGS.out.endswith(os.sep):
        raise UsageError(f"--out={FLAGS.out!r} is a directory; give the path of the .tflite file to write, e.g. "
                         f"--out={os.path.join(FLAGS.out, 'model.tflite')}")
    margin = FLAGS.output_margin
    if not (margin == margin and 0.0 <= margin <= 10.0):  # NaN fails the first test
        raise UsageError(f"--output_margin={margin!r} must be between 0 and 10 (a fraction of the output range's "
                         "span added on each side)")
    if FLAGS.streaming:
        clash = [f"--{f}" for f in ("fold_pooling", "strip_names") if FLAGS[f].value]
        clash += [f"--{f}" for f in ("int4", "split_front_end") if FLAGS[f].value and FLAGS.float]
        clash += ["--io_dtype"] if FLAGS.io_dtype != "auto" else []
        if clash:
            raise UsageError(f"--streaming does not take {', '.join(clash)}")
        if not FLAGS.representative and not FLAGS.float:
            raise UsageError("--streaming needs --representative=windows.npy (float windows [n, frames, mels]): "
                             "they calibrate the logits' range and the points the Keras model has no quantizer for")
    import keras
    import numpy as np

    import kws_quant  # noqa: F401  (registers the layers)
    from kws_quant.export.tflite import read_linear_ops, to_tflite, to_tflite_streaming

    rep = None
    if FLAGS.representative:
        try:
            rep = np.load(FLAGS.representative, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"--representative={FLAGS.representative!r} is not a readable .npy array: {e}") from None
    try:
        model = keras.saving.load_model(FLAGS.model)
    except Exception as e:  # noqa: BLE001 — any load failure means "not a model we can read"
        raise UsageError(f"--model={FLAGS.model!r} is not a Keras model file: {type(e).__name__}: {e}") from None
    try:
        if FLAGS.streaming and FLAGS.float:
            path = to_tflite_streaming(model, FLAGS.out, quantize=False)
        elif FLAGS.streaming:
            path = to_tflite_streaming(model, FLAGS.out, rep, output_margin=margin,
                                       split_front_end=FLAGS.split_front_end, int4=FLAGS.int4)
        else:
            path = to_tflite(model, FLAGS.out, rep, quantize=not FLAGS.float, io_dtype=FLAGS.io_dtype,
                             int4=FLAGS.int4, fold_pooling=FLAGS.fold_pooling, output_margin=margin,
                             strip_names=FLAGS.strip_names, split_front_end=FLAGS.split_front_end)
    except ValueError as e:  # UnsupportedModelError and every documented check of to_tflite name the problem
        raise UsageError(f"--model={FLAGS.model!r} cannot be exported as asked: {e}") from None
    ops = read_linear_ops(path)
    kinds = ", ".join(f"{d['op']}[{d['weight_type']}]" for d in ops)
    print(f"wrote {path} ({os.path.getsize(path)} bytes): {kinds}")
    if FLAGS.streaming and not FLAGS.float:
        from kws_quant.export.tflite.stream_export import stream_metadata_path
        print(f"wrote {stream_metadata_path(path)} (hop, window and the int8 state tensors)")
    if FLAGS.split_front_end:
        from kws_quant.export.front_end import front_end_path
        print(f"wrote {front_end_path(path)} (the per-frame front end)")
    return path


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    if wants_help(argv):
        print(f"{__doc__.strip()}\n\nusage: python -m kws_quant.export [flags]\n\n{FLAGS.get_help()}")
        return 0
    try:
        run(argv)
    except UsageError as e:
        print(f"error: {e}\n\n{FLAGS.get_help()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
