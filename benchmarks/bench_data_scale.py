"""The input pipeline at the full Speech Commands' size: feature extraction throughput, time to the first training
step, training throughput and peak resident memory, with the in-memory cache and with the disk cache.

    python benchmarks/bench_data_scale.py --clips 105829 --corpus_dir /tmp/sc_full --cache_dir /tmp/sc_full_cache

First it writes (once; reused while ``--clips`` and ``--seed`` match) a folder in the Speech Commands v0.02 layout:
the 35 words of the full dataset, ``<word>/<speaker>_nohash_<n>.wav`` (16-bit PCM, 16 kHz, ≤ 1 s, ~40 clips per
speaker) and ``_background_noise_``. Its audio is the shared Speech Commands test archive's recordings
(``../shared/data/speech_commands``) resampled by a random speed factor (0.85-1.15), with a random gain and a little
noise, each written under a new speaker; without that folder, chirps and noise. Nothing of it is committed.

Then each setting runs in a fresh process (so that its peak memory is its own): the configuration of
``configs/kws_speech_commands.py`` (augmentation on: the decoded audio is what is cached) reads the folder, builds
its datasets (``kws_quant.experiments.kws.prepare_data``) and trains the float model for ``--epochs`` epochs. One row
per setting: ``memory`` (the tf.data in-memory cache), ``disk, cold`` (the disk cache built first), ``disk, warm``
(a second run reusing it). Times count from the start of the process (imports, reading the folder, building the
cache, tracing the step). Peak memory is the process's maximum resident set size (``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time

START = time.time()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WORDS = ("backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no off "
         "on one right seven sheila six stop three tree two up visual wow yes zero").split()
"""The 35 words of Speech Commands v0.02."""
SHARED_SC = os.path.join(os.path.dirname(ROOT), "shared", "data", "speech_commands")
RATE = 16000


def make_corpus(out: str, clips: int, seed: int) -> None:
    """Write the folder (see the module docstring); a ``corpus.json`` written last marks it complete."""
    import numpy as np

    from kws_quant.data import load_audio, write_wav
    from kws_quant.data.augmentation import change_speed, coloured_noise

    marker = os.path.join(out, "corpus.json")
    wanted = {"clips": clips, "seed": seed, "source": "shared" if os.path.isdir(SHARED_SC) else "synthetic"}
    if os.path.isfile(marker) and json.load(open(marker)) == wanted:
        return
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    if wanted["source"] == "shared":
        sources = [load_audio(os.path.join(d, n), RATE) for d, _, names in os.walk(SHARED_SC) for n in sorted(names)
                   if n.endswith(".wav") and "_background_noise_" not in d]
        noises = [load_audio(os.path.join(SHARED_SC, "_background_noise_", n), RATE)
                  for n in sorted(os.listdir(os.path.join(SHARED_SC, "_background_noise_")))]
    else:
        t = np.arange(RATE) / RATE
        sources = [(0.3 * np.sin(2 * np.pi * (200 + 40 * k) * t * (1 + t))).astype(np.float32) for k in range(50)]
        noises = [0.1 * coloured_noise(60 * RATE, e, rng) for e in (0.0, 1.0, 2.0)]
    os.makedirs(os.path.join(out, "_background_noise_"))
    for k, noise in enumerate(noises):
        write_wav(os.path.join(out, "_background_noise_", f"noise_{k}.wav"), noise, RATE)
    start = time.perf_counter()
    for i in range(clips):
        word = WORDS[i % len(WORDS)]
        speaker = f"{(i // 40) * 2654435761 % 2**32:08x}"
        audio = change_speed(sources[int(rng.integers(len(sources)))], float(rng.uniform(0.85, 1.15)))[:RATE]
        audio = audio * 10 ** (rng.uniform(-6, 6) / 20) + 0.002 * rng.standard_normal(audio.size)
        folder = os.path.join(out, word)
        if i < len(WORDS):
            os.makedirs(folder)
        write_wav(os.path.join(folder, f"{speaker}_nohash_{i}.wav"), np.clip(audio, -1, 1), RATE)
        if (i + 1) % 10000 == 0:
            print(f"  {i + 1:,} clips written ({(i + 1) / (time.perf_counter() - start):,.0f}/s)", flush=True)
    with open(marker, "w") as f:
        json.dump(wanted, f)


def child(a) -> None:
    """One setting: prepare the data and train; print one JSON line of measurements."""
    import keras
    import tensorflow as tf

    from kws_quant.experiments import kws as kx

    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", "kws_speech_commands.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config().to_dict()
    cfg["data"].update(data_dir=a.corpus_dir, feature_cache=a.cache, feature_cache_dir=a.cache_dir,
                       batch_size=a.batch)
    keras.utils.set_random_seed(0)
    t_prepare = time.time()
    data = kx.prepare_data(cfg)
    prepared = time.time()
    train_clips = int((data.manifest["split"] == "train").sum())
    model = kx.build_model(cfg, data, "float")
    kx.compile_model(model, 1e-3, 1000, jit_compile=True)

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first, self.epochs = None, []

        def on_train_batch_end(self, batch, logs=None):
            if self.first is None:
                self.first = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append([time.time(), None])

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1][1] = time.time()

    clock = Clock()
    model.fit(data.train, epochs=a.epochs, verbose=0, callbacks=[clock])
    steps = data.steps_per_epoch
    cache_info = {}
    root = a.cache_dir
    if os.path.isdir(root):
        for key in os.listdir(root):
            info_path = os.path.join(root, key, "cache.json")
            if os.path.isfile(info_path):
                info = json.load(open(info_path))
                if info["describe"].startswith("train"):
                    cache_info = {k: info[k] for k in ("elements", "build_seconds", "bytes")}
    print("RESULT " + json.dumps({
        "setting": a.label, "train_clips": train_clips, "clips": len(data.manifest),
        "prepare_s": prepared - t_prepare, "first_step_s": clock.first - a.t0,
        "epoch_s": [e - b for b, e in clock.epochs], "steps_per_epoch": steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cache": cache_info,
        "tf": tf.__version__}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=105829, help="clips in the generated folder (full v0.02: 105,829)")
    p.add_argument("--corpus_dir", default=os.path.join("/tmp", "kws_sc_full"))
    p.add_argument("--cache_dir", default=os.path.join("/tmp", "kws_sc_full_cache"),
                   help="the disk cache (emptied first: the first disk run builds it, the second reuses it)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=["memory", "disk", "disk"],
                   help="in order; a repeated 'disk' is a warm run reusing the cache of the one before")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="disk", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=START, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    start = time.perf_counter()
    make_corpus(a.corpus_dir, a.clips, a.seed)
    print(f"corpus: {a.clips:,} clips in {a.corpus_dir} (ready after {time.perf_counter() - start:.0f} s)", flush=True)
    shutil.rmtree(a.cache_dir, ignore_errors=True)
    rows, seen = [], set()
    for setting in a.settings:
        label = setting if setting == "memory" else ("disk, warm" if setting in seen else "disk, cold")
        seen.add(setting)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--cache={setting}", f"--label={label}",
               f"--corpus_dir={a.corpus_dir}", f"--cache_dir={a.cache_dir}", f"--epochs={a.epochs}",
               f"--batch={a.batch}", f"--t0={time.time()}"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"error: setting {label!r} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"  {label}: done", flush=True)
    r0 = rows[0]
    print(f"\n{r0['clips']:,} clips ({r0['train_clips']:,} train), batch {a.batch}, {a.epochs} epoch(s) of "
          f"{r0['steps_per_epoch']} steps, {os.cpu_count()} CPUs, TensorFlow {r0['tf']}\n")
    print("| setting | cache build (train clips/s) | time to first step (s) | epoch 1 clips/s (steps/s) | "
          "later epochs clips/s (steps/s) | peak RSS (MiB) | cache on disk (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c = r["cache"] if r["setting"] != "memory" else {}
        build = (f"{c['elements'] / c['build_seconds']:,.0f}" if c and r["setting"] == "disk, cold" else "-")
        def rate(seconds):
            n = len(seconds)
            return (f"{r['train_clips'] * n / sum(seconds):,.0f} ({r['steps_per_epoch'] * n / sum(seconds):.1f})"
                    if n else "-")
        disk = f"{c['bytes'] / 2**20:,.0f}" if c else "-"
        print(f"| {r['setting']} | {build} | {r['first_step_s']:.1f} | {rate(r['epoch_s'][:1])} | "
              f"{rate(r['epoch_s'][1:])} | {r['peak_rss_mib']:,.0f} | {disk} |")


if __name__ == "__main__":
    main()
