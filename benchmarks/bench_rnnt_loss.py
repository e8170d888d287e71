"""Benchmark: RNN-T loss + gradient vs the log_softmax floor and a naive autodiff while-loop baseline.

Usage: python benchmarks/bench_rnnt_loss.py [--batch 8 --frames 200 --labels 40 --vocab 32 --reps 15]

All three are ``tf.function``-compiled, warmed up, then timed in interleaved repetitions (one call of each per
repetition, order rotated); prints markdown tables of median wall-clock ms, ratios, and value differences (also
against the naive recursion run in float64).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--labels", type=int, default=40)
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    return p


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


import numpy as np
import tensorflow as tf

from asr_ext.rnnt_loss import rnnt_loss

FLOOR, OURS, NAIVE = "tf.nn.log_softmax + grad (floor)", "asr_ext rnnt_loss", "naive while-loops + autodiff"


def naive_rnnt_loss(logits, labels, logit_lengths, label_lengths, blank=0):
    """Straightforward reference: α by a tf.while_loop over t with an inner tf.while_loop over u, differentiated
    by autodiff. logits [B, T, U+1, V] float -> NLL [B] (same dtype)."""
    lp = tf.nn.log_softmax(logits)
    b, t_max, u1 = tf.unstack(tf.shape(logits)[:3])
    blank_lp = tf.transpose(lp[..., blank], [1, 0, 2])  # [T, B, U1]
    emit_lp = tf.reduce_sum(lp[:, :, :-1, :] * tf.one_hot(labels, tf.shape(lp)[3], dtype=lp.dtype)[:, None], axis=-1)
    emit_lp = tf.pad(tf.transpose(emit_lp, [1, 0, 2]), [[0, 0], [0, 0], [1, 0]], constant_values=-np.inf)
    blank_prev = tf.concat([tf.zeros_like(blank_lp[:1]), blank_lp[:-1]], axis=0)  # arc into row t from row t-1
    neg_inf = tf.constant(-np.inf, lp.dtype)
    row0 = tf.concat([tf.zeros([1, b], lp.dtype), tf.fill([u1 - 1, b], neg_inf)], axis=0)  # virtual row t = -1

    def row_step(t, prev, rows):
        def cell(u, left, cells):
            stay = prev[u] + blank_prev[t][:, u]
            move = left + emit_lp[t][:, u]
            a = tf.reduce_logsumexp(tf.stack([stay, move]), axis=0)
            return u + 1, a, cells.write(u, a)

        cells = tf.TensorArray(lp.dtype, size=u1)
        _, _, cells = tf.while_loop(lambda u, *_: u < u1, cell, (0, tf.fill([b], neg_inf), cells))
        row = tf.ensure_shape(cells.stack(), prev.shape)  # [U1, B]
        return t + 1, row, rows.write(t, row)

    rows = tf.TensorArray(lp.dtype, size=t_max)
    _, _, rows = tf.while_loop(lambda t, *_: t < t_max, row_step, (0, row0, rows))
    alpha = tf.transpose(rows.stack(), [2, 0, 1])  # [B, T, U1]
    end = tf.stack([tf.range(b), logit_lengths - 1, label_lengths], axis=1)  # (b, T_b - 1, U_b)
    return -(tf.gather_nd(alpha, end) + tf.gather_nd(lp[..., blank], end))


def make_inputs(batch, frames, labels, vocab, seed=0):
    """Random logits [B, T, U+1, V] float32, labels in [1, V) (blank = 0), lengths between 3/4 and full (full for
    utterance 0)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, frames, labels + 1, vocab)).astype(np.float32)
    t_len = rng.integers(frames * 3 // 4, frames + 1, size=batch)
    u_len = rng.integers(labels * 3 // 4, labels + 1, size=batch)
    t_len[0], u_len[0] = frames, labels
    y = rng.integers(1, vocab, size=(batch, labels))
    return (tf.constant(logits), tf.constant(y, tf.int32), tf.constant(t_len, tf.int32),
            tf.constant(u_len, tf.int32))


def main():
    args = parser().parse_args()
    logits, y, t_len, u_len = make_inputs(args.batch, args.frames, args.labels, args.vocab)

    def with_grad(loss_fn):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_fn(x)
                total = tf.reduce_sum(loss)
            return loss, tape.gradient(total, x)
        return run

    fns = {
        FLOOR: with_grad(lambda x: tf.reduce_sum(tf.nn.log_softmax(x), axis=[1, 2, 3])),
        OURS: with_grad(lambda x: rnnt_loss(x, y, t_len, u_len)),
        NAIVE: with_grad(lambda x: naive_rnnt_loss(x, y, t_len, u_len)),
    }
    outs = {}
    for name, fn in fns.items():
        for _ in range(args.warmup):
            outs[name] = [o.numpy() for o in fn(logits)]
    ref = [o.numpy() for o in fns[NAIVE](tf.cast(logits, tf.float64))]  # float64 reference (naive, untimed)

    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(args.reps):
        for name in names[r % 3:] + names[:r % 3]:
            t0 = time.perf_counter()
            fns[name](logits)[0].numpy()
            times[name].append(1e3 * (time.perf_counter() - t0))
    med = {name: float(np.median(v)) for name, v in times.items()}

    print(f"RNN-T loss + gradient, B={args.batch} T={args.frames} U={args.labels} V={args.vocab}, float32; "
          f"{args.reps} interleaved reps after {args.warmup} warm-up; TF {tf.__version__}, {os.cpu_count()} CPU "
          f"cores ({platform.processor() or platform.machine()}), load average {os.getloadavg()[0]:.1f}\n")
    print("| implementation | median ms | min ms | median / floor | median / ours |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        print(f"| {name} | {med[name]:.2f} | {min(times[name]):.2f} | {med[name] / med[FLOOR]:.2f} | "
              f"{med[name] / med[OURS]:.2f} |")
    print(f"\nTargets: ours / floor = {med[OURS] / med[FLOOR]:.2f} (<= 10), naive / ours = "
          f"{med[NAIVE] / med[OURS]:.1f} (>= 5).")
    print("\n| values (max abs difference) | loss (nats) | loss, relative | gradient |")
    print("|---|---:|---:|---:|")
    for label, (a, b) in (("ours vs naive, both float32", (outs[OURS], outs[NAIVE])),
                          ("ours vs float64 reference", (outs[OURS], ref)),
                          ("naive float32 vs float64 reference", (outs[NAIVE], ref))):
        print(f"| {label} | {np.abs(a[0] - b[0]).max():.1e} | {(np.abs(a[0] - b[0]) / np.abs(b[0])).max():.1e} | "
              f"{np.abs(a[1] - b[1]).max():.1e} |")


if __name__ == "__main__":
    main()
