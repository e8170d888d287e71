"""Memory projections of a quantized model on a deployment target (METHODS §11).

:func:`project_memory` reports, per layer and in total, the bytes of its stored weights on a target preset, its
activation buffers, and the streaming input buffer. Weight sizes come from the same plan and size function as the
packed export (:func:`kws_quant.export.storage_plan.plan_model`, :meth:`StoredTensor.nbytes`), so the projected
weight storage equals the size of the payload :func:`kws_quant.export.packing.pack` writes for the same preset; the
storage rules (widths, word rounding, scales, zero points, batch-norm folding) are documented there and in
docs/memory.md.

Command line (the numbers in docs/memory.md)::

    python -m eval.memory --recipes float tanh8 tanh5 tanh4 tanh1 --presets arm-neon arm-neon+packed nna-5bit nna-1bit
"""
from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pandas as pd

from kws_quant.export.storage_plan import (FLOAT_BITS, MEMORY_PRESETS, PRESETS, MemoryPreset, get_preset,
                                           model_input_bits, plan_model, segment_nbytes)
from kws_quant.layers import quant_layers

__all__ = ["MEMORY_PRESETS", "MemoryPreset", "PRESETS", "project_memory", "streaming_state_bytes", "summary_table",
           "to_markdown"]

COLUMNS = ["layer", "type", "params", "model_bits", "weight_bits", "weight_bytes", "bias_bytes", "gain_bytes",
           "scale_bytes", "param_bytes", "activation_bytes", "float32_bytes", "int8_bytes", "vs_float32", "vs_int8",
           "note"]
"""Per-layer columns. ``params``: stored values (after batch-norm folding; scales excluded). ``model_bits``: the
kernel quantizer's bits (32 float); ``weight_bits``: bits per stored kernel value on the target. ``weight_bytes``:
kernels (an LSTM's input and recurrent kernels); ``bias_bytes``: biases and batch-norm offsets; ``gain_bytes``:
unfolded batch-norm gains and other parameters; ``scale_bytes``: float32 scales, zero points and codebooks;
``param_bytes``: their sum. ``activation_bytes``:
input + output buffers (TOTAL row: the largest, not a sum). ``float32_bytes = 4·params``, ``int8_bytes = params``;
``vs_float32 = float32_bytes / param_bytes``, ``vs_int8 = int8_bytes / param_bytes`` (reduction factors)."""


def project_memory(model, preset="arm-neon", word_bits: int | None = None, packed: bool | None = None,
                   activations: bool = True) -> pd.DataFrame:
    """Per-layer memory of ``model`` deployed with ``preset``, plus a ``TOTAL`` row.

    Args:
        model: a built functional/Sequential Keras model (e.g. ``build_kws_model``); bits are read from its
            quantizers (``layer.quantizers[role].bits``), float tensors count 32 bits.
        preset: ``"arm-neon"``, ``"nna-1bit"``, ``"nna-5bit"``, a :class:`MemoryPreset` or a dict of its fields.
        word_bits: overrides the preset's word size (8, 16, 32 or 64 bits).
        packed: overrides the preset's packing (``arm-neon`` with ``packed=True``: sub-8-bit weights bit-packed).
        activations: ``False``: weights only; activation and stream buffers count 0 bytes (models with a variable
            time axis, e.g. the RNN-T, whose buffers depend on the utterance length).

    Returns:
        A DataFrame with :data:`COLUMNS`, one row per non-input layer and a final ``TOTAL`` row, all sizes in bytes.
        ``df.attrs["summary"]``: preset, word_bits, packed, param_bytes, peak_activation_bytes (and its layer),
        stream_buffer_bytes (the model input, e.g. ``window_frames × n_mels``, at the input quantizer's bits),
        streaming_state_bytes (a zoo model's state when it runs frame-synchronously: :func:`streaming_state_bytes`;
        ``None`` for models that stream on a sliding window),
        total_bytes (their sum), vs_float32, vs_int8 and notes.

    Raises:
        ValueError: unknown preset, ``word_bits`` not in (8, 16, 32, 64), a quantizer wider than the preset
            stores, a nested model, or an unknown (``None``) activation dimension.
    """
    preset = get_preset(preset, word_bits, packed)
    plans = plan_model(model, preset)
    notes = []
    float_kernels = [p.name for p in plans for t in p.tensors if t.role == "kernel" and t.codes is None]
    if not any(layer.quantizers for layer in quant_layers(model)):
        notes.append("the model has no quantized layers: every tensor is counted as float32 (32 bits)")
        warnings.warn(f"project_memory: {notes[-1]}", stacklevel=2)
    elif float_kernels:
        notes.append(f"float kernels counted at 32 bits: {', '.join(float_kernels)}")
    # kernels that do not fit the preset's native (narrowest) width and take a wider one (nna-1bit: 8 bits)
    native = min(preset.kernel_bits) if preset.kernel_bits is not None else None
    widened = {f"{p.name}/{t.role}": f"{t.bits}->{t.storage_bits}" for p in plans for t in p.tensors
               if native is not None and t.codes is not None and t.role.endswith("kernel") and t.storage_bits > native}
    if widened:
        by_change = {}
        for name, change in widened.items():
            by_change.setdefault(change, []).append(name.split("/")[0])
        notes.append("; ".join(f"{c.split('->')[0]}-bit kernels stored in {c.split('->')[1]}-bit words, not the "
                               f"preset's native {native} bits: {', '.join(names)}" for c, names in by_change.items()))
    rows = [_layer_row(p, preset.word_bits, activations) for p in plans]
    df = pd.DataFrame(rows, columns=COLUMNS)
    total = _total_row(df)
    df = pd.concat([df, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
    for col in ("model_bits", "weight_bits"):
        df[col] = df[col].astype("Int64")
    stream = sum(segment_nbytes(_elements(tuple(t.shape[1:]), "model input"), b, preset.word_bits)
                 for t, b in zip(model.inputs, model_input_bits(model))) if activations else 0
    df.attrs["summary"] = {
        "preset": preset.name, "word_bits": preset.word_bits, "packed": preset.packed,
        "param_bytes": int(total["param_bytes"]), "peak_activation_bytes": int(total["activation_bytes"]),
        "peak_activation_layer": total["note"].removeprefix("peak activation: "),
        "stream_buffer_bytes": int(stream),
        "streaming_state_bytes": streaming_state_bytes(model, preset.word_bits) if activations else None,
        "total_bytes": int(total["param_bytes"] + total["activation_bytes"] + stream),
        "vs_float32": total["vs_float32"], "vs_int8": total["vs_int8"], "notes": notes,
        "widened_kernels": widened, "native_kernel_bits": native}
    return df


def streaming_state_bytes(model, word_bits: int = 8) -> int | None:
    """Bytes of the state of :func:`kws_quant.models.stream_state.to_streaming` ``(model)`` (its buffers at the
    activation quantizers' widest bits, 32 for a float model, and an LSTM's float32 ``h`` and ``c``, in
    ``word_bits`` words), or ``None`` when
    the model has no frame-synchronous form (it streams on a sliding window: ``stream_buffer_bytes``)."""
    from kws_quant.layers import QuantActivation
    from kws_quant.models.stream_state import NotStreamableError, to_streaming

    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        return None
    try:
        stream = to_streaming(model)
    except NotStreamableError:
        return None
    bits = [layer.quantizers["output"].bits for layer in quant_layers(model)
            if isinstance(layer, QuantActivation) and "output" in layer.quantizers]
    value_bits = max(bits) if bits else FLOAT_BITS
    total = 0
    for node in stream.plan:
        if node.kind == "lstm":  # QuantLSTM keeps h and c in float (Keras and the LiteRT export alike)
            total += 2 * segment_nbytes(int(node.state[1]), FLOAT_BITS, word_bits)
        elif node.kind in ("conv", "pool") and node.state[0]:
            total += segment_nbytes(int(np.prod(node.state)), value_bits, word_bits)
    return total


def _elements(shape: tuple, what: str) -> int:
    if any(d is None for d in shape):
        raise ValueError(f"{what} has shape {shape} with an unknown dimension; memory projections need fixed shapes")
    return math.prod(shape)


def _layer_row(plan, word_bits: int, activations: bool = True) -> dict:
    by = {"weight_bytes": 0, "bias_bytes": 0, "gain_bytes": 0, "scale_bytes": 0}
    kernel = next((t for t in plan.tensors if t.role == "kernel"), None)
    for t in plan.tensors:
        sizes = t.nbytes(word_bits)
        data = sizes.get("codes", sizes.get("values"))
        column = "weight_bytes" if t.role.endswith("kernel") else {"bias": "bias_bytes", "offset": "bias_bytes"}.get(
            t.role, "gain_bytes")  # kernels: also an LSTM's recurrent_kernel
        by[column] += data
        by["scale_bytes"] += sizes.get("scale", 0) + sizes.get("zero_point", 0) + sizes.get("codebook", 0)
    params = sum(t.count for t in plan.tensors)
    param_bytes = sum(by.values())
    if plan.folded_into:
        activation, note = 0, f"folded into {plan.folded_into}"
    elif not activations:
        activation, note = 0, ""
    elif plan.front_end:  # runs per frame on float features before the window buffer: one frame in, one out
        frame = plan.output_shape[-1]
        activation = segment_nbytes(frame, FLOAT_BITS, word_bits) + segment_nbytes(frame, plan.output_bits, word_bits)
        note = "front end, per frame"
    else:
        ins = sum(segment_nbytes(_elements(s, f"layer {plan.name!r} input"), b, word_bits)
                  for s, b in zip(plan.input_shapes, plan.input_bits))
        out = segment_nbytes(_elements(plan.output_shape, f"layer {plan.name!r} output"), plan.output_bits, word_bits)
        activation, note = ins + out, (f"{plan.folded_bn} folded in" if plan.folded_bn else "")
    return {"layer": plan.name, "type": plan.type, "params": params,
            "model_bits": kernel.bits if kernel else None, "weight_bits": kernel.storage_bits if kernel else None,
            **by, "param_bytes": param_bytes, "activation_bytes": activation,
            "float32_bytes": params * FLOAT_BITS // 8, "int8_bytes": params,
            "vs_float32": _ratio(params * FLOAT_BITS // 8, param_bytes), "vs_int8": _ratio(params, param_bytes),
            "note": note}


def _ratio(reference: int, actual: int) -> float:
    return reference / actual if actual else float("nan")


def _total_row(df: pd.DataFrame) -> dict:
    sums = {c: int(df[c].sum()) for c in ("params", "weight_bytes", "bias_bytes", "gain_bytes", "scale_bytes",
                                          "param_bytes", "float32_bytes", "int8_bytes")}
    peak = df["activation_bytes"].idxmax()
    return {"layer": "TOTAL", "type": "", "model_bits": None, "weight_bits": None, **sums,
            "activation_bytes": int(df["activation_bytes"][peak]),
            "vs_float32": _ratio(sums["float32_bytes"], sums["param_bytes"]),
            "vs_int8": _ratio(sums["int8_bytes"], sums["param_bytes"]),
            "note": f"peak activation: {df['layer'][peak]}"}


# -- rendering ----------------------------------------------------------------------------------------------------
def to_markdown(df: pd.DataFrame, columns: list | None = None) -> str:
    """A GitHub markdown table of ``df`` (ratios with 2 decimals, missing values blank), then its notes if any."""
    columns = list(columns or df.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in df[columns].iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    notes = df.attrs.get("summary", {}).get("notes", [])
    return "\n".join(lines + [f"\nNote: {n}." for n in notes])


def _cell(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.2f}"
    return str(v)


def summary_table(projections: dict) -> pd.DataFrame:
    """``{(model label, preset label): project_memory(...)}`` → one row of totals per projection."""
    rows = []
    for (model, preset), df in projections.items():
        s = df.attrs["summary"]
        rows.append({"model": model, "preset": preset, "params": int(df["params"].iloc[-1]),
                     "param_bytes": s["param_bytes"], "vs_float32": s["vs_float32"], "vs_int8": s["vs_int8"],
                     "peak_activation_bytes": s["peak_activation_bytes"],
                     "stream_buffer_bytes": s["stream_buffer_bytes"], "total_bytes": s["total_bytes"]})
    return pd.DataFrame(rows)


# -- command line ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    """Print the projections of the KWS model for recipes × presets (``NAME+packed`` packs an unpacked preset)."""
    parser = argparse.ArgumentParser(prog="python -m eval.memory", description=main.__doc__)
    parser.add_argument("--recipes", nargs="+", default=["float", "tanh8", "tanh5", "tanh4", "tanh1"])
    parser.add_argument("--presets", nargs="+", default=["arm-neon", "arm-neon+packed", "nna-5bit", "nna-1bit"])
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--word-bits", type=int, default=None)
    parser.add_argument("--per-layer", action="store_true", help="also print each projection's per-layer table")
    args = parser.parse_args(argv)

    from kws_quant.models import KWSModelConfig, build_kws_model

    projections = {}
    for recipe in args.recipes:
        model = build_kws_model(KWSModelConfig(), args.num_classes, recipe)
        for spec in args.presets:
            name, _, flag = spec.partition("+")
            if flag not in ("", "packed"):
                raise ValueError(f"preset {spec!r}: only the suffix '+packed' is allowed")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = project_memory(model, name, word_bits=args.word_bits, packed=True if flag else None)
            projections[(recipe, spec)] = df
            if args.per_layer:
                print(f"\n### {recipe}, {spec}\n\n{to_markdown(df)}")
    print("\n" + to_markdown(summary_table(projections)))


if __name__ == "__main__":
    main()
