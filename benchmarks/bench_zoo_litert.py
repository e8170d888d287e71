"""LiteRT int8 latency of the zoo's streaming models: one streaming step vs one full-window re-run, and (with
trained runs) the streaming export's agreement with Keras on real speech.

Per architecture it exports the int8 streaming model (``kws_quant.export.tflite.to_tflite_streaming``: one 20-ms
hop in, logits and int8 state out) and the int8 window model from the same ops (``to_tflite_window``), then times
on one CPU thread with LiteRT's default XNNPACK delegate: ``step_us``, one streaming invoke; ``window_us``, one
window invoke; ``step_host_us``, a whole host-loop step in Python (frames and the previous step's state set, invoke,
logits and next state read: Python's tensor copies dominate it). Each is the median over ``--blocks`` rounds of
``--steps`` calls of each in turn, so all see the same machine load. Per second of audio the streaming model runs
50 steps and a window model re-run every 20 ms runs 50 windows: ``window/step`` is also the ratio per second of
audio. The same stream is also exported with its ≤4-bit kernels packed INT4 (``int4=True``; ``int4_step_us``,
``stream_int4_KB``) and with its per-mel normalisation split into the front end (``split_front_end=True``: int8
frames in, no float op; ``core_step_us``, ``core_KB``).

Models: ``--runs arch=RUN_DIR ...`` loads ``RUN_DIR/<--phase>/model.keras`` of trained runs and its data
(``config.json``): validation windows calibrate the export and the test windows measure agreement: each test
window streamed hop by hop from the zero state through the LiteRT file (its int8 state fed back) and through the
Keras ``StreamingModel``; ``within_1_step`` is the share of all logits of all steps within one int8 output step,
``window_within_1_step`` the same for the window export against the Keras window model,
``continuous_within_1_step`` the same over one continuous stream of all the test clips one after another (the state
never reset), ``acc`` the test top-1 of the LiteRT stream's last step (= the window) vs Keras. Without ``--runs``:
default-size models (40 mels, 12 classes, ``--recipe``) with random weights and ranges calibrated on random
log-mel-like windows (latency only).

    python benchmarks/bench_zoo_litert.py --runs dscnn=runs/sc_dscnn tcresnet=runs/sc_tcresnet crnn=runs/sc_crnn
    python benchmarks/bench_zoo_litert.py --archs dscnn tcresnet          # latency only, untrained models
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ARCHS = ("dscnn", "tcresnet", "crnn")


def block_medians(fns: dict, steps: int, blocks: int) -> dict:
    """Median microseconds per call of each function, over ``blocks`` rounds of ``steps`` calls of each in turn."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm up
        for _ in range(10):
            fn()
    for _ in range(blocks):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append(1e6 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def timers(stream_path: str, window_path: str | None, int4_path: str, core_path: str, window_steps: int) -> dict:
    """The timed calls: ``step_invoke`` (one streaming invoke, its inputs set once), ``step_host`` (set the frames
    and the state the step before returned, invoke, read the logits and the next state: a host loop in Python),
    ``window_invoke`` (one window invoke; without a window file, a recurrent model's: ``window_steps`` step invokes,
    its stream over one window), ``int4_invoke`` / ``core_invoke`` (one step of the INT4 / split file)."""
    from kws_quant.export.tflite import make_interpreter
    from kws_quant.export.tflite.stream_export import LiteRTStreamingModel

    m = LiteRTStreamingModel(stream_path, num_threads=1)
    rng = np.random.default_rng(0)
    frames = m.frames_input(rng.normal(size=m.frames_shape))
    state = [m.initial_state()]

    def step_host():
        _, state[0] = m.step(frames, state[0])

    step_host()
    if window_path is None:  # the window of a recurrent model is its stream over the window's hops
        invoke = LiteRTStreamingModel(stream_path, num_threads=1).interpreter.invoke

        def window_invoke():
            for _ in range(window_steps):
                invoke()
    else:
        w = make_interpreter(window_path, num_threads=1)
        wd = w.get_input_details()[0]
        w.set_tensor(wd["index"], rng.normal(size=wd["shape"]).astype(wd["dtype"]))
        window_invoke = w.invoke
    others = {}
    for name, path in (("int4_invoke", int4_path), ("core_invoke", core_path)):
        o = LiteRTStreamingModel(path, num_threads=1)
        o.interpreter.set_tensor(o.inputs["frames"]["index"], o.frames_input(rng.normal(size=o.frames_shape)))
        for n, s in o.initial_state().items():
            o.interpreter.set_tensor(o.inputs[n]["index"], s)
        others[name] = o.interpreter.invoke
    return {"step_invoke": m.interpreter.invoke, "step_host": step_host, "window_invoke": window_invoke, **others}


def load_windows(cfg, calib_n: int, test_n: int | None):
    from kws_quant.experiments.kws import prepare_data

    data = prepare_data(cfg)

    def take(ds, limit):  # the whole split (a few thousand clips at most), then the first `limit` windows
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
        return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]

    return take(data.validation, calib_n)[0], *take(data.test, test_n)


def agreement(model, stream_path, window_path, int4_path, core_path, test_x, test_y) -> dict:
    from kws_quant.export.tflite import output_step, run_tflite
    from kws_quant.export.tflite.stream_export import LiteRTStreamingModel, check_streaming, keras_stream_logits

    c = check_streaming(model, stream_path, test_x)
    # one continuous stream of all the test clips one after another (~6.5 min of audio), the state never reset
    runner = LiteRTStreamingModel(stream_path)
    hop = runner.hop
    frames = np.concatenate(list(test_x))
    hops = frames[:len(frames) // hop * hop].reshape(-1, hop, frames.shape[-1])
    cerr = np.abs(runner.run(hops) - keras_stream_logits(model, hops)) / runner.output_grid[0]
    keras_window = np.asarray(model.predict(test_x, batch_size=256, verbose=0))
    werr = None if window_path is None else \
        np.abs(run_tflite(window_path, test_x) - keras_window) / output_step(window_path)
    return {"within_1_step": c["within_one_step"], "max_steps": c["max_error_steps"], "saturated": c["saturated"],
            "window_within_1_step": None if werr is None else float(np.mean(werr <= 1.0)),
            "continuous_within_1_step": float(np.mean(cerr <= 1.0)), "continuous_max_steps": float(cerr.max()),
            "continuous_steps": len(hops),
            "lite_acc": float(np.mean(c["litert_last"].argmax(1) == test_y)),
            "keras_acc": float(np.mean(keras_window.argmax(1) == test_y)),
            "test_windows": len(test_x), "steps": c["steps_per_window"],
            "int4_within_1_step": check_streaming(model, int4_path, test_x)["within_one_step"],
            "core_within_1_step": check_streaming(model, core_path, test_x)["within_one_step"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="arch=RUN_DIR of trained runs")
    p.add_argument("--phase", default="tanh4")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS, help="without --runs")
    p.add_argument("--recipe", default="tanh4", help="without --runs")
    p.add_argument("--calibration", type=int, default=256, help="validation windows calibrating the export")
    p.add_argument("--test", type=int, default=0, help="test windows checked (0: all)")
    p.add_argument("--steps", type=int, default=300, help="calls per timed block")
    p.add_argument("--blocks", type=int, default=9)
    p.add_argument("--output_margin", type=float, default=0.25, help="as config.export.output_margin")
    args = p.parse_args()

    import keras

    import kws_quant  # noqa: F401
    from kws_quant import qat
    from kws_quant.export.tflite import UnsupportedModelError
    from kws_quant.export.tflite.stream_export import LiteRTStreamingModel, to_tflite_streaming, to_tflite_window
    from kws_quant.models import KWSModelConfig, build_kws_model

    models = {}
    if args.runs:
        from eval.report import load_run

        for item in args.runs:
            arch, sep, path = item.partition("=")
            if not sep or arch not in ARCHS:
                p.error(f"--runs {item!r}: expected arch=RUN_DIR with arch in {ARCHS}")
            cfg, paths = load_run(path, [args.phase])
            models[arch] = (keras.saving.load_model(paths[args.phase], compile=False), cfg)
    else:
        rng = np.random.default_rng(0)
        for arch in args.archs:
            model = build_kws_model(KWSModelConfig(arch=arch), 12, args.recipe)
            level = rng.normal(-4.0, 1.5, size=(256, 1, 40))
            x = (level + rng.normal(0.0, 0.5, size=(256, 98, 40))).astype(np.float32)
            qat.calibrate(model, x[:128])
            models[arch] = (model, x)
    cols = ["arch", "step_us", "window_us", "window/step", "step_host_us", "int4_step_us", "core_step_us",
            "state_bytes", "stream_int8_KB", "window_int8_KB", "stream_int4_KB", "core_KB", "within_1_step",
            "max_steps", "saturated", "continuous_within_1_step", "continuous_max_steps", "window_within_1_step",
            "int4_within_1_step", "core_within_1_step", "lite_acc", "keras_acc"]
    rows = []
    out_dir = tempfile.mkdtemp(prefix="bench_zoo_litert_")
    for arch, (model, cfg) in models.items():
        if args.runs:
            calib, test_x, test_y = load_windows(cfg, args.calibration, args.test or None)
        else:
            calib, test_x, test_y = cfg, None, None
        sp, wp = os.path.join(out_dir, f"{arch}_stream.tflite"), os.path.join(out_dir, f"{arch}_window.tflite")
        p4, pc = os.path.join(out_dir, f"{arch}_stream4.tflite"), os.path.join(out_dir, f"{arch}_core.tflite")
        try:
            to_tflite_streaming(model, sp, calib, output_margin=args.output_margin)
            try:
                to_tflite_window(model, wp, calib, output_margin=args.output_margin)
            except UnsupportedModelError as e:  # an LSTM: its window is its stream over the window's hops
                print(f"{arch}: its window is its stream over the window's hops ({e})")
                wp = None
            to_tflite_streaming(model, p4, calib, output_margin=args.output_margin, int4=True)
            to_tflite_streaming(model, pc, calib, output_margin=args.output_margin, split_front_end=True)
        except UnsupportedModelError as e:
            print(f"{arch}: not exported: {e}")
            rows.append({"arch": arch})
            continue
        runner = LiteRTStreamingModel(sp)
        window = int(model.input_shape[1])
        us = block_medians(timers(sp, wp, p4, pc, window // runner.hop), args.steps, args.blocks)
        r = {"arch": arch, "step_us": us["step_invoke"], "window_us": us["window_invoke"],
             "window/step": us["window_invoke"] / us["step_invoke"], "step_host_us": us["step_host"],
             "int4_step_us": us["int4_invoke"], "core_step_us": us["core_invoke"],
             "state_bytes": sum(s.nbytes for s in runner.initial_state().values()),
             "stream_int8_KB": os.path.getsize(sp) / 1000,
             "window_int8_KB": None if wp is None else os.path.getsize(wp) / 1000,
             "stream_int4_KB": os.path.getsize(p4) / 1000,
             "core_KB": os.path.getsize(pc) / 1000}
        if test_x is not None:
            r.update(agreement(model, sp, wp, p4, pc, test_x, test_y))
        rows.append(r)
        print(r, flush=True)
    print(f"\nLiteRT int8, 1 thread, XNNPACK; microseconds per call, median of {args.blocks} rounds of "
          f"{args.steps} calls of each")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else f"{100 * v:.2f} %" if c in (
                "within_1_step", "window_within_1_step", "continuous_within_1_step", "saturated", "lite_acc",
                "keras_acc", "int4_within_1_step", "core_within_1_step")
                         else f"{v:.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
