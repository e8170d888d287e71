"""Training-step cost of two-stage QAT against float, for the ~250K-parameter KWS model, side by side.

    python benchmarks/bench_qat_step.py [--batch 64] [--rounds 15] [--steps 20] [--breakdown]

The three models (float; tanh4 recipe in stage 1; the same in stage 2) are built and compiled once; each round runs
``--steps`` compiled training steps of each model on the same batch, in rotating order, and the table reports the
median per-step time over rounds and its ratio to float (and, for the XLA rows, to the XLA float step: the
like-for-like ratio). Target (issue: KWS end to end): stage 2 ≤ 1.3× float.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--jit", choices=["off", "on", "both"], default="both",
                   help="XLA-compile the train step (Keras compile(jit_compile=...)); 'both' measures each")
    p.add_argument("--breakdown", action="store_true",
                   help="also time XLA stage-2 models with one group of roles quantized (where the extra time goes)")
    p.add_argument("--groups", default="",
                   help="with --breakdown: the groups to time, comma-separated (kernel, input, activation, "
                        "bias + batch-norm, current); empty: all")
    return p


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kws_quant import qat  # noqa: E402
from kws_quant.models import KWSModelConfig, build_kws_model  # noqa: E402
from kws_quant.models.recipes import RECIPE_PRESETS  # noqa: E402


def make(recipe, stage=None, jit=False):
    keras.utils.set_random_seed(0)
    model = build_kws_model(KWSModelConfig(), 3, recipe)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    if stage is not None:
        qat.set_stage(model, stage)
    return model


BREAKDOWN = {"kernel": ("kernel",), "input": ("input",), "activation": ("output",),
             "bias + batch-norm": ("bias", "gain", "offset")}
"""``--breakdown``: one XLA stage-2 model per group of roles, only those roles quantized (tanh4 recipe)."""


def only(roles, **overrides):
    """The tanh4 recipe with every role outside ``roles`` float (``overrides``: other specs for kept roles)."""
    full = RECIPE_PRESETS["tanh4"]()
    return {**{role: (spec if role in roles else None) for role, spec in full.items() if role != "layers"},
            **overrides, "layers": {}}


def main():
    args = parser().parse_args()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((args.batch, 98, 40)).astype(np.float32) * 2 - 6)
    y = tf.constant(rng.integers(0, 3, args.batch).astype(np.int32))
    models = {}
    for jit in ([False, True] if args.jit == "both" else [args.jit == "on"]):
        tag = ", XLA" if jit else ""
        models.update({f"float{tag}": make("float", jit=jit), f"tanh4 stage 1{tag}": make("tanh4", 1, jit),
                       f"tanh4 stage 2{tag}": make("tanh4", 2, jit)})
    if args.breakdown:
        groups = [g.strip() for g in args.groups.split(",") if g.strip()] or [*BREAKDOWN, "current"]
        unknown = sorted(set(groups) - set(BREAKDOWN) - {"current"})
        if unknown:
            raise SystemExit(f"--groups: unknown group(s) {unknown}; known: {', '.join([*BREAKDOWN, 'current'])}")
        for group, roles in BREAKDOWN.items():
            if group in groups:
                models[f"only {group}, XLA"] = make(only(roles), 2, True)
        if "current" in groups:
            models["only activation (range='current'), XLA"] = make(
                only(("output",), output="linear(bits=8, range='current')"), 2, True)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    steps = {}
    for name, m in models.items():  # compile and warm up: the first fit traces
        m.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
        steps[name] = []
    names = list(models)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            models[name].fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
            steps[name].append((time.perf_counter() - start) / args.steps)
    no_xla = steps.get("float")  # ratios to the default (non-XLA) float step, when it was measured (not --jit on)
    print(f"\nKWS 250K model, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"TF {tf.__version__}, Keras {keras.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs\n")
    print("| model | median ms/step | min ms/step | ratio to float without XLA (median) | "
          "ratio to float with XLA (median / min) |")  # '-': that float step was not measured (--jit on / off)
    print("|---|---:|---:|---:|---:|")
    xla = steps.get("float, XLA")
    for name in names:
        med = statistics.median(steps[name])
        like = (f"{med / statistics.median(xla):.2f} / {min(steps[name]) / min(xla):.2f}"
                if xla is not None and name.endswith("XLA") else "-")
        plain = f"{med / statistics.median(no_xla):.2f}" if no_xla is not None else "-"
        print(f"| {name} | {1000 * med:.2f} | {1000 * min(steps[name]):.2f} | {plain} | {like} |")


if __name__ == "__main__":
    main()
