"""Scan one hour of audio with the 250K KWS model (features + model, batched), float and 4-bit QAT, side by side.

    python benchmarks/bench_stream_scan.py [--minutes 60] [--hops 1,2] [--rounds 3]

One hour = 60 streams of 60 s (as eval.report builds them), each through ``eval.kws_streams.StreamScorer``:
``tf.signal`` log-mel of the stream, then the model on every window at the hop. Rounds alternate the configurations;
the table gives the median seconds per hour of audio and the real-time factor. Target (issue: Evaluation):
under 10 s per hour of audio on the 2-core machine (RTF ≤ 0.003).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--hops", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    return p


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from eval.kws_streams import AudioStream, StreamConfig, StreamScorer  # noqa: E402
from kws_quant.features import FeatureConfig  # noqa: E402
from kws_quant.models import KWSModelConfig, build_kws_model  # noqa: E402


def main():
    p = parser()
    args = p.parse_args()
    feats = FeatureConfig()
    rng = np.random.default_rng(0)
    if not args.minutes * 60 >= 1:
        p.error(f"--minutes={args.minutes} must be at least 1/60 (one second of audio)")
    seconds = [60.0] * int(args.minutes) + ([args.minutes % 1 * 60] if args.minutes % 1 * 60 >= 1 else [])
    streams = [AudioStream((rng.standard_normal(int(s * 16000)) * 0.05).astype(np.float32), 16000, [])
               for s in seconds]
    hours = sum(seconds) / 3600
    labels = ["_silence_", "_unknown_", "hey_computer"]
    configs = {}
    for recipe in ("float", "tanh4"):
        model = build_kws_model(KWSModelConfig(), len(labels), recipe)
        for hop in (int(h) for h in args.hops.split(",")):
            for jit in (False, True):
                name = f"{recipe}, hop {hop} ({10 * hop} ms){', XLA' if jit else ''}"
                configs[name] = StreamScorer(model, feats, labels, StreamConfig(hop_frames=hop), jit_compile=jit)
    for scorer in configs.values():  # trace/compile outside the timing
        scorer.scores(streams[0])
    times = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for s in streams:
                configs[name].scores(s)
            times[name].append((time.perf_counter() - start) / hours)
    feat_t = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for s in streams:
            configs[names[0]].logmel(s.audio)
        feat_t.append((time.perf_counter() - start) / hours)
    print(f"\n{len(streams)} streams of up to 60 s ({hours:.3f} h), TF {tf.__version__}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds; log-mel alone: {statistics.median(feat_t):.2f} s per hour\n")
    print("| model, hop | median s per hour of audio | min | real-time factor |")
    print("|---|---:|---:|---:|")
    for name in names:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {min(times[name]):.2f} | {med / 3600:.5f} |")


if __name__ == "__main__":
    main()
