"""Benchmark: LiteRT int8 vs float export of the ~250K-parameter KWS model — latency per window and file size.

Usage: python benchmarks/bench_tflite.py [--recipe tanh4 --steps 16 --reps 31 --windows 200 --threads 1]

Builds the model with ``build_kws_model(KWSModelConfig(), 12, recipe)``, runs a few QAT steps on random
log-mel-like windows (enough for moving-average ranges; accuracy is not the point), exports every variant below,
then times them in the same process: batch 1 (one [1, 98, 40] window per invoke), ``num_threads`` threads, all
variants interleaved in every repetition (order rotated), each repetition ``--windows`` windows of
``set_tensor`` + ``invoke`` + ``get_tensor`` per variant (then as many bare ``invoke()`` calls). Prints a markdown
table of the median per-window latency and per-invoke latency, the ratios to the float baseline, the file size and
its ratio, and the int8 variants' agreement with the Keras model (share of logits within one output step, max error
in steps) on other random windows.

Variants: the float export (XNNPACK, and builtin kernels only); the int8 export (XNNPACK, and builtin kernels only);
int8 with INT4-packed weights; float and int8 with the front end split off (``split_front_end=True``: bn_in and
the pooling run per frame outside the model, which takes the input quantizer's int8 window; timed on
``FrontEnd.apply``'s output, i.e. the model only). Ablations on the previous model layout (``KWSModelConfig(quantize_before_pool=True)``:
the input quantizer before the pooling, so the pooling averages quantized frames), trained the same way: its int8
export with the pooling as an int8 depthwise conv (the default for that layout), with the pooling folded into
dense_in (``fold_pooling=True``), and with LiteRT's int8 AVERAGE_POOL_2D (what the converter emits by itself). A
second table gives the sizes with ``strip_names=True`` (both files). "reference" rows: the kind of model behind the
issue's 3.9× (a plain ~200K-weight fake-quant DNN: per-tensor 8-bit kernels, biases, no batch-norm, on the pooled
window, no front end), its ratios against its own float export.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tanh4")
    ap.add_argument("--steps", type=int, default=16, help="QAT steps of batch 64 before export")
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--windows", type=int, default=200, help="windows per variant per repetition")
    ap.add_argument("--threads", type=int, default=1)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


import keras  # noqa: E402
import numpy as np  # noqa: E402

import kws_quant  # noqa: E402,F401
from kws_quant.export import tflite as T  # noqa: E402
from kws_quant.export.front_end import front_end_path, load_front_end  # noqa: E402
from kws_quant.export.tflite.ir import ShapeOp  # noqa: E402
from kws_quant.models import KWSModelConfig, build_kws_model  # noqa: E402


def logmel_like(rng, n, frames=98, mels=40):
    level = rng.normal(-4.0, 1.5, size=(n, 1, mels))
    drift = np.cumsum(rng.normal(0.0, 0.3, size=(n, frames, mels)), axis=1) * 0.3
    return (level + drift + rng.normal(0.0, 0.5, size=(n, frames, mels))).astype(np.float32)


def make_model(recipe, steps, seed=0, **config):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_kws_model(KWSModelConfig(**config), 12, recipe)
    n = 64 * steps
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(logmel_like(rng, n), rng.integers(0, 12, n), epochs=1, batch_size=64, verbose=0)
    return model, rng


PREVIOUS = "previous layout (quantizer → pool)"
REFERENCE = "reference: plain 200K DNN, per-tensor, no BN"


def plain_dnn(steps, seed=0):
    """1960 → 96 → 96 → 96 → 12 (207,744 weights): 8-bit input and activation quantizers, per-tensor 8-bit tanh
    kernels, 8-bit biases, ReLU; input: one pooled window [49, 40] (what the KWS model's dense_in reads)."""
    from kws_quant.layers import QuantActivation, QuantDense

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    kernel = "tanh(bits=8, mode='symmetric', per_channel=False, output_scale='max')"
    inp = keras.Input((49, 40))
    x = keras.layers.Flatten()(QuantActivation(quantizer="linear(bits=8)", name="input_quant")(inp))
    for i in range(3):
        x = QuantDense(96, activation="relu", kernel_quantizer=kernel, bias_quantizer="linear(bits=8)",
                       name=f"dense_{i}")(x)
        x = QuantActivation(quantizer="linear(bits=8)", name=f"act_{i}")(x)
    model = keras.Model(inp, QuantDense(12, kernel_quantizer=kernel, bias_quantizer="linear(bits=8)")(x))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = 64 * steps
    model.fit(logmel_like(rng, n, 49), rng.integers(0, 12, n), epochs=1, batch_size=64, verbose=0)
    return model


def export_all(model, previous, rep, out):
    """{variant: (path, Keras model it is compared with)}."""
    paths = {}
    paths["float32"] = (T.to_tflite_float(model, os.path.join(out, "float32.tflite")), model)
    paths["int8"] = (T.to_tflite(model, os.path.join(out, "int8.tflite"), rep), model)
    paths["int8 + int4 packed"] = (T.to_tflite(model, os.path.join(out, "int4.tflite"), rep, int4=True), model)
    paths["float32, front end split"] = (
        T.to_tflite_float(model, os.path.join(out, "f_split.tflite"), split_front_end=True), model)
    paths["int8, front end split"] = (
        T.to_tflite(model, os.path.join(out, "split.tflite"), rep, split_front_end=True), model)
    paths["int8 + int4, front end split"] = (
        T.to_tflite(model, os.path.join(out, "split4.tflite"), rep, int4=True, split_front_end=True), model)
    paths[f"{PREVIOUS}: int8, depthwise pool"] = (T.to_tflite(previous, os.path.join(out, "prev.tflite"), rep),
                                                   previous)
    paths[f"{PREVIOUS}: int8, pooling folded"] = (
        T.to_tflite(previous, os.path.join(out, "fold.tflite"), rep, fold_pooling=True), previous)
    original = ShapeOp.depthwise_pool
    ShapeOp.depthwise_pool = staticmethod(lambda layer: False)  # ablation: keep the converter's AVERAGE_POOL_2D
    try:
        paths[f"{PREVIOUS}: int8 AVERAGE_POOL_2D"] = (
            T.to_tflite(previous, os.path.join(out, "avgpool.tflite"), rep), previous)
    finally:
        ShapeOp.depthwise_pool = original
    return paths


def stripped_sizes(model, rep, out):
    """File sizes with ``strip_names=True``: {variant: bytes}."""
    return {"float32": os.path.getsize(T.to_tflite_float(model, os.path.join(out, "f_s.tflite"), strip_names=True)),
            "int8": os.path.getsize(T.to_tflite(model, os.path.join(out, "i_s.tflite"), rep, strip_names=True)),
            "int8 + int4 packed": os.path.getsize(T.to_tflite(model, os.path.join(out, "i4_s.tflite"), rep,
                                                               int4=True, strip_names=True)),
            "int8, front end split": os.path.getsize(T.to_tflite(model, os.path.join(out, "sp_s.tflite"), rep,
                                                                  strip_names=True, split_front_end=True))}


def model_inputs(path, windows):
    """What the model at ``path`` takes for float ``[n, 98, 40]`` windows: its split front end's output, every
    other frame for the reference DNN (input ``[49, 40]``), or the windows."""
    if os.path.exists(front_end_path(path)):
        return load_front_end(path).apply(windows)
    frames = int(T.make_interpreter(path).get_input_details()[0]["shape"][1])
    return windows[:, ::2] if frames == windows.shape[1] // 2 else windows


def time_variants(variants, windows, reps, per_rep):
    """variants: {name: interpreter}. Per repetition and variant (order rotated each repetition): ``per_rep``
    windows of set_tensor + invoke + get_tensor ("call"), then ``per_rep`` bare invokes ("invoke").
    Returns {name: {"call": [s/window per rep], "invoke": [...]}}."""
    prepared = []
    for name, (interp, path) in variants.items():
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        x = model_inputs(path, windows)
        if inp["dtype"] == np.int8 and x.dtype != np.int8:
            data = [T.quantize_input(w[None], *inp["quantization"]) for w in x]
        else:
            data = [w[None] for w in x]
        prepared.append((name, interp, inp["index"], out["index"], data))
    for _, interp, i_in, i_out, data in prepared:  # warm-up
        for x in data[:50]:
            interp.set_tensor(i_in, x)
            interp.invoke()
            interp.get_tensor(i_out)
    times = {name: {"call": [], "invoke": []} for name, *_ in prepared}
    for r in range(reps):
        k = r % len(prepared)
        for name, interp, i_in, i_out, data in prepared[k:] + prepared[:k]:
            t0 = time.perf_counter()
            for j in range(per_rep):
                interp.set_tensor(i_in, data[j % len(data)])
                interp.invoke()
                interp.get_tensor(i_out)
            t1 = time.perf_counter()
            invoke = interp.invoke
            for _ in range(per_rep):
                invoke()
            t2 = time.perf_counter()
            times[name]["call"].append((t1 - t0) / per_rep)
            times[name]["invoke"].append((t2 - t1) / per_rep)
    return times


def main():
    args = parser().parse_args()

    load0 = os.getloadavg()
    model, rng = make_model(args.recipe, args.steps)
    previous, _ = make_model(args.recipe, args.steps, quantize_before_pool=True)
    reference = plain_dnn(args.steps)
    rep, test = logmel_like(rng, 256), logmel_like(rng, 128)
    with tempfile.TemporaryDirectory() as out:
        exports = export_all(model, previous, rep, out)
        exports[f"{REFERENCE}: float32"] = (T.to_tflite_float(reference, os.path.join(out, "ref_f.tflite")), reference)
        exports[f"{REFERENCE}: int8"] = (T.to_tflite(reference, os.path.join(out, "ref.tflite"), rep[:, ::2]),
                                         reference)
        paths = {k: p for k, (p, _) in exports.items()}
        sizes = {k: os.path.getsize(p) for k, p in paths.items()}
        stripped = stripped_sizes(model, rep, out)
        agreement = {}
        for name, (p, keras_model) in exports.items():
            if T.output_step(p) > 0:  # int8 variants
                x = test[:, ::2] if name.startswith(REFERENCE) else test  # the reference takes [49, 40]
                lite = T.run_tflite(p, model_inputs(p, x))
                err = np.abs(lite - np.asarray(keras_model(x, training=False))) / T.output_step(p)
                agreement[name] = (float(np.mean(err <= 1.0)), float(err.max()))
        variants = {}
        for name, p in paths.items():
            variants[name] = (T.make_interpreter(p, num_threads=args.threads), p)
            if name in ("float32", "int8"):
                variants[name + ", XNNPACK off"] = (T.make_interpreter(p, num_threads=args.threads, xnnpack=False), p)
        ops = {name: ", ".join(o["op_name"] for o in interp._get_ops_details())
               for name, (interp, _) in variants.items()}
        times = time_variants(variants, logmel_like(rng, 64), args.reps, args.windows)
    load1 = os.getloadavg()

    base0 = {k: np.median(times["float32"][k]) for k in ("call", "invoke")}
    print(f"LiteRT, batch 1 ([1, 98, 40] per invoke), {args.threads} thread(s), recipe {args.recipe!r}, "
          f"{args.reps} interleaved repetitions x {args.windows} windows; median per window. 'window': set_tensor + "
          "invoke + get_tensor from Python; 'invoke': invoke() alone.")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load0[0]:.1f} at start, {load1[0]:.1f} at end.\n")
    print("| variant | µs / window | speed-up | µs / invoke | speed-up | file (bytes) | smaller | "
          "logits within 1 step of Keras | max error (steps) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ref = {k: np.median(times[f"{REFERENCE}: float32"][k]) for k in ("call", "invoke")}
    for name, ts in times.items():
        file_key = name.replace(", XNNPACK off", "")
        base, base_size = (base0, sizes["float32"]) if not name.startswith(REFERENCE) else (
            ref, sizes[f"{REFERENCE}: float32"])
        call, inv = np.median(ts["call"]), np.median(ts["invoke"])
        agree = agreement.get(file_key)
        a = f"{100 * agree[0]:.2f}% | {agree[1]:.2f}" if agree else "— | —"
        print(f"| {name} | {call * 1e6:.1f} | {base['call'] / call:.2f}× | {inv * 1e6:.1f} | "
              f"{base['invoke'] / inv:.2f}× | {sizes[file_key]} | {base_size / sizes[file_key]:.3f}× | {a} |")
    print("\nWith strip_names=True (both files):\n\n| variant | file (bytes) | smaller |\n|---|---:|---:|")
    for name, size in stripped.items():
        print(f"| {name} | {size} | {stripped['float32'] / size:.3f}× |")
    print("\nExecution plans (ops after delegation; DELEGATE = one XNNPACK partition):")
    for name, plan in ops.items():
        print(f"- {name}: {plan}")


if __name__ == "__main__":
    main()
