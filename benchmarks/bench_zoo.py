"""The KWS model zoo side by side: size, compute, memory, latency per streaming step vs per window, accuracy.

For each architecture (default sizes, 40 log-mel bins, 12 classes, the given recipe) it prints one markdown row:
parameters, MACs of one 1-s window, MACs per second of audio when the window model re-runs every ``hop`` frames
(20 ms) vs the frame-synchronous streaming model (``kws_quant.models.stream_state``), their ratio, the streaming
state (int8 bytes), weight memory on ``arm-neon`` (int8) and ``nna-5bit``, and the measured CPU time per minute of
audio on one thread (TensorFlow, XLA, median of ``--repeats`` runs over the same random ``--seconds`` feature stream,
scaled to a minute): the window model re-run every ``hop`` frames (``StreamingRunner``, 2048 windows per call) vs the
streaming model stepping with state (``StatefulStreamingRunner``, an XLA scan of 512 steps per call). Single calls
at batch 1 are not timed: in TensorFlow they measure op dispatch, not the model. With ``--runs arch=RUN_DIR ...`` it
adds each run's validation top-1 (speakers never heard in training) per phase from its ``metrics.json``.

    python benchmarks/bench_zoo.py --recipe tanh4 --runs dnn=runs/kws_speech_commands tcresnet=runs/sc_tcresnet
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARCHS = ("dnn", "dscnn", "tcresnet", "crnn")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tanh4")
    p.add_argument("--hop", type=int, default=2, help="frames between window re-runs = frames per streaming step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the timed feature stream")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--runs", nargs="*", default=[], help="arch=RUN_DIR: add the run's validation accuracy per phase")
    p.add_argument("--accuracy_only", action="store_true", help="with --runs: print only the accuracy table")
    return p


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from eval.memory import project_memory, streaming_state_bytes  # noqa: E402
from kws_quant.models import KWSModelConfig, StreamingRunner, build_kws_model  # noqa: E402
from kws_quant.models.compute import macs_per_second, window_macs  # noqa: E402
from kws_quant.models.stream_state import NotStreamableError, StatefulStreamingRunner, to_streaming  # noqa: E402

PHASES = ("float", "tanh8", "tanh5", "tanh4")


def median_seconds(fn, repeats: int) -> float:
    fn()  # trace and compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy(run_dir: str) -> dict:
    """``{phase: metrics}`` of a run's phases with clip metrics (validation and test splits)."""
    metrics = json.load(open(os.path.join(run_dir, "metrics.json"), encoding="utf-8"))
    return {p: m for p, m in metrics.items() if "validation_classification" in m}


def _phase_order(phase: str):
    """float, the post-training baselines, then the QAT twins from the widest weights down."""
    digits = "".join(ch for ch in phase if ch.isdigit())
    return (0 if phase == "float" else 1 if phase.startswith("ptq_") else 2, -int(digits or 0), phase)


def accuracy_table(runs: dict) -> list[str]:
    """Markdown rows: per run and phase, validation top-1 with its 95 % interval, the change against the run's
    float phase (points), test top-1 with its interval."""
    lines = ["| arch | phase | parameters | validation top-1 [95 % CI] | vs float | test top-1 [95 % CI] |",
             "|---|---|---|---|---|---|"]

    def cell(c):
        lo, hi = c["accuracy_ci95"]
        return f"{100 * c['accuracy']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] ({c['clips']} clips)"

    for arch, phases in runs.items():
        base = phases.get("float", {}).get("validation_classification", {}).get("accuracy")
        for phase, m in sorted(phases.items(), key=lambda kv: _phase_order(kv[0])):
            v = m["validation_classification"]
            delta = "-" if base is None or phase == "float" else f"{100 * (v['accuracy'] - base):+.1f}"
            lines.append(f"| {arch} | {phase} | {m.get('parameters', 0):,} | {cell(v)} | {delta} | "
                         f"{cell(m['test_classification'])} |")
    return lines


def row(arch: str, recipe: str, hop: int, repeats: int, seconds: float = 60.0) -> dict:
    model = build_kws_model(KWSModelConfig(arch=arch, hop=hop), 12, recipe)
    frames = int(round(seconds * 100))  # 10-ms frames
    feats = np.random.default_rng(0).normal(size=(frames, model.input_shape[-1])).astype(np.float32)
    per_min = 60.0 / seconds
    windowed = StreamingRunner(model, hop_frames=hop, jit_compile=True)
    out = {"arch": arch, "params": model.count_params(), "window_MMACs": window_macs(model) / 1e6,
           "window_MMACs_per_s": macs_per_second(model, hop) / 1e6,
           "arm_int8_weight_KB": project_memory(model, "arm-neon").attrs["summary"]["param_bytes"] / 1000,
           "nna_5bit_weight_KB": project_memory(model, "nna-5bit").attrs["summary"]["param_bytes"] / 1000,
           "window_s_per_min": per_min * median_seconds(lambda: windowed.posteriors(feats), repeats)}
    try:
        stream = to_streaming(model)
    except NotStreamableError:
        return {**out, "stream_MMACs_per_s": float("nan"), "mac_ratio": float("nan"), "state_bytes": None,
                "stream_s_per_min": float("nan"), "time_ratio": float("nan")}
    stateful = StatefulStreamingRunner(stream)
    seconds = per_min * median_seconds(lambda: stateful.posteriors(feats), repeats)
    return {**out, "stream_MMACs_per_s": stream.macs_per_second() / 1e6,
            "mac_ratio": macs_per_second(model, hop) / stream.macs_per_second(),
            "state_bytes": streaming_state_bytes(model), "stream_s_per_min": seconds,
            "time_ratio": out["window_s_per_min"] / seconds}


def main():
    p = parser()
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    runs = {}
    for item in args.runs:
        arch, sep, path = item.partition("=")
        if not sep or arch not in ARCHS or not os.path.isfile(os.path.join(path, "metrics.json")):
            p.error(f"--runs {item!r}: expected arch=RUN_DIR with arch in {ARCHS} and RUN_DIR/metrics.json")
        runs[arch] = accuracy(path)
    rows = [row(a, args.recipe, args.hop, args.repeats, args.seconds) for a in args.archs]
    cols = ["arch", "params", "window_MMACs", "window_MMACs_per_s", "stream_MMACs_per_s", "mac_ratio", "state_bytes",
            "arm_int8_weight_KB", "nna_5bit_weight_KB", "window_s_per_min", "stream_s_per_min", "time_ratio"]
    acc_cols = [f"val_{ph}" for ph in PHASES] if runs else []
    if runs and args.accuracy_only:
        print("\n".join(accuracy_table(runs)))
        return
    print(f"recipe {args.recipe}, hop {args.hop} frames (10 ms each), 1 CPU thread, median of {args.repeats}")
    print("| " + " | ".join(cols + acc_cols) + " |")
    print("|" + "---|" * (len(cols) + len(acc_cols)))
    for r in rows:
        cells = [f"{r[c]:.3g}" if isinstance(r[c], float) else ("-" if r[c] is None else f"{r[c]:,}")
                 if not isinstance(r[c], str) else r[c] for c in cols]
        acc = runs.get(r["arch"], {})
        cells += [f"{100 * acc[ph]['validation_classification']['accuracy']:.1f} %" if ph in acc else "-"
                  for ph in PHASES] if runs else []
        print("| " + " | ".join(cells) + " |")
    if runs:
        print("\n" + "\n".join(accuracy_table(runs)))


if __name__ == "__main__":
    main()
