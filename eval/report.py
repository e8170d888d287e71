r"""Compare trained KWS models on one page: streaming DET curves, operating points, memory projections.

    python -m eval.report --run_dir=runs/kws_synthetic                 # every phase of a training run
    python -m eval.report --run_dir=runs/kws_fsdd --models=float,tanh4 --out=docs/report_fsdd
    python -m eval.report --run_dir=runs/kws_speech_commands --data_dir=my_recordings   # a user's own folder

Writes ``report.md``, ``report.html``, CSV tables (``operating_points.csv``, ``det_<model>.csv``, ``memory.csv``)
and PNG plots (``det.png``, ``memory.png``) to ``--out`` (default ``<run_dir>/report``).

Longer than 500 lines: one document (markdown, HTML, tables, figures) whose sections share one scoring of the run's
models; :mod:`eval.folder_eval` and :mod:`eval.kws_streams` already hold what is not the document itself.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
import sys
import time

import numpy as np
import pandas as pd

# the report's memory rows: (kws_quant.export.storage_plan.MEMORY_PRESETS name, packed)
MEMORY_ROWS = (("arm-neon", None), ("arm-neon", True), ("nna-5bit", None), ("nna-1bit", None))


def default_thresholds() -> np.ndarray:
    """A grid dense near 1, where saturated softmax posteriors operate: 101 linear steps plus 1 - 10^-7 … 1 - 10^-1
    (float32 posteriors resolve steps of about 6e-8 below 1)."""
    return np.unique(np.round(np.concatenate([np.linspace(0, 1, 101), 1 - np.logspace(-7, -1, 61)]), 10))


@dataclasses.dataclass
class ModelResult:
    name: str
    curves: dict          # keyword -> eval.det.DetCurve
    points: pd.DataFrame  # one row per keyword × FA/h target (with bootstrap CI)
    memory: pd.DataFrame  # summary per preset
    scan_seconds: float
    latency: pd.DataFrame = None  # one row per keyword × FA/h target: keyword end → detection, seconds
    streaming: str = "window"     # how the streams ran: "stateful" (frame-synchronous with state) or "window"


def load_run(run_dir: str, names=None) -> tuple[dict, dict]:
    """``(config, {phase: model path})`` of a training run directory; raises naming what is missing."""
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{run_dir} is not a kws_quant run directory: no config.json")
    from kws_quant.config_defaults import kws_config
    from kws_quant.run_files import read_json
    from kws_quant.run_files import merged

    saved = read_json(cfg_path, "the run's configuration", "it is written by kws_quant.train: restore it, or train "
                      "the run again into a new --workdir")
    cfg = merged(kws_config().to_dict(), saved)  # keys added since the run keep their defaults
    from kws_quant.run_files import ptq_phase_name

    phases = (["float", *map(ptq_phase_name, cfg["qat"].get("ptq_recipes", ())), *cfg["qat"]["recipes"]]
              if names is None else list(names))
    paths = {p: os.path.join(run_dir, p, "model.keras") for p in phases}
    missing = [p for p, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"no trained model for {missing} in {run_dir} (expected <phase>/model.keras)")
    return cfg, paths


def load_kws_model(path: str, window: int, n_mels: int, num_classes: int):
    """Load a ``.keras`` file and check it is a KWS model for these features and labels."""
    import keras

    import kws_quant  # noqa: F401  (registers the layers)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file does not exist: {path}")
    from kws_quant.run_files import check_keras_file

    check_keras_file(path, "delete it and run kws_quant.train again with the same command to train that phase again")
    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 — any load failure means "not a model we can read"
        raise ValueError(f"{path} is not a Keras model file: {type(e).__name__}: {e}") from None
    shape_in, shape_out = tuple(model.input_shape[1:]), model.output_shape[-1]
    if shape_in != (window, n_mels) or shape_out != num_classes:
        raise ValueError(f"{path} is not a KWS model for this run: input {shape_in}, {shape_out} outputs; "
                         f"expected input {(window, n_mels)} and {num_classes} outputs")
    return model


def evaluate_model(name, model, streams, features, label_names, keyword_labels, stream_cfg, thresholds,
                   fa_targets=(1.0, 2.0, 5.0), n_boot: int = 200, runner=None,
                   streaming: str = "auto") -> ModelResult:
    """Score every stream with ``model`` (or ``runner``, e.g. its LiteRT export, with ``model``'s memory) and
    compute its DET curves, operating points with bootstrap intervals, detection latencies and memory."""
    from eval.det import evaluate_keywords
    from eval.kws_streams import StreamScorer
    from eval.latency import detection_latencies, latency_summary

    scorer = StreamScorer(model, features, label_names, stream_cfg, runner=runner, streaming=streaming)
    start = time.perf_counter()
    scored = [scorer.scores(s, stream_id=f"stream{i}") for i, s in enumerate(streams)]
    scan = time.perf_counter() - start
    timing = dict(smoothing_s=stream_cfg.smoothing_s, refractory_s=stream_cfg.refractory_s,
                  tolerance_s=stream_cfg.tolerance_s)
    counts = evaluate_keywords(scored, thresholds, hop_s=scorer.hop_s, keywords=keyword_labels,
                               keyword_names=label_names, fa_in_positive_streams=True, **timing)
    curves = {k: c.curve() for k, c in counts.items()}
    rows, latency = [], []
    for k, c in counts.items():
        ci = c.bootstrap(fa_targets=fa_targets, n_boot=n_boot, seed=stream_cfg.seed)
        for _, r in ci.iterrows():
            rows.append({"model": name, "keyword": k, "fa_per_hour": r["target"], "frr": r["estimate"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], "status": r["status"]})
        for _, op in curves[k].frr_at_fa(fa_targets).iterrows():
            found = detection_latencies(scored, label_names.index(k), k, op["threshold"], hop_s=scorer.hop_s,
                                        **timing) if op["in_range"] else np.zeros(0)
            latency.append({"model": name, "keyword": k, "fa_per_hour": op["fa_per_hour"],
                            "threshold": op["threshold"], **latency_summary(found)})
    with warnings.catch_warnings():  # the float reference is expected to have no quantizers
        warnings.filterwarnings("ignore", message="project_memory: the model has no quantized layers")
        memory = pd.DataFrame([memory_row(name, model, p, packed) for p, packed in MEMORY_ROWS
                               if runner is None])  # an export's memory is its Keras model's row
    return ModelResult(name, curves, pd.DataFrame(rows), memory, scan, pd.DataFrame(latency),
                       getattr(scorer.runner, "mode", "window"))


def memory_row(name, model, preset: str, packed) -> dict:
    """One row of the memory table; ``fallback`` says which kernels the preset stores wider than their bits (a
    4-bit model on ``nna-1bit`` keeps its 4-bit kernels in 8-bit words) — empty when none."""
    from eval.memory import project_memory

    summary = project_memory(model, preset, packed=packed).attrs["summary"]
    widened = summary["widened_kernels"]
    stored = sorted({int(c.split("->")[1]) for c in widened.values()})
    return {"model": name, "preset": preset + ("+packed" if packed else ""),
            **{k: summary[k] for k in ("param_bytes", "peak_activation_bytes", "stream_buffer_bytes", "total_bytes",
                                       "vs_float32")},
            "streaming_state_bytes": summary["streaming_state_bytes"],
            "fallback": (f"{len(widened)} kernels in {'/'.join(map(str, stored))}-bit words "
                         f"(native {summary['native_kernel_bits']})" if widened else "")}


def relative_to_float(points: pd.DataFrame, reference: str = "float") -> pd.DataFrame:
    """Add ``frr_rel_change`` = (FRR − FRR_ref) / FRR_ref per keyword and FA/h target (NaN where FRR_ref = 0)."""
    ref = points[points["model"] == reference].set_index(["keyword", "fa_per_hour"])["frr"]
    key = list(zip(points["keyword"], points["fa_per_hour"]))
    base = np.array([ref.get(k, np.nan) for k in key], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(base > 0, (points["frr"].to_numpy(float) - base) / base, np.nan)
    return points.assign(frr_rel_change=rel)


def plot_det(results, path: str, keywords) -> None:
    """FRR (%) against false accepts per hour (log scale), one line per model, one panel per keyword (rows of 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(keywords)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, kw in zip(axes.flat, keywords):
        # FA/h = 0 is drawn at half the resolution (one false accept in the keyword-free hours), the axis floor
        floor = 0.5 / max(r.curves[kw].hours for r in results)
        for r in results:
            env = r.curves[kw].envelope()
            fa = np.maximum(env["fa_per_hour"].to_numpy(float), floor)
            ax.step(fa, 100 * env["frr"].to_numpy(float), where="post", label=r.name, linewidth=1.8)
        ax.set_xscale("log")
        ax.set_xlim(left=floor)
        ax.axvline(2 * floor, color="0.6", linestyle=":", linewidth=1)  # 1 false accept: the resolution
        ax.set_xlabel("false accepts per hour (log scale; left edge: 0)")
        ax.set_ylabel("false rejection rate (%)")
        ax.set_title(f"DET: {kw}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(memory: pd.DataFrame, path: str) -> None:
    """Grouped bars: weight storage (KiB) per model and preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = memory.pivot(index="model", columns="preset", values="param_bytes") / 1024
    table = table.loc[memory["model"].unique()]
    ax = table.plot.bar(figsize=(8, 4.2), rot=0, width=0.8)
    ax.set_ylabel("weight storage (KiB)")
    ax.set_xlabel("model")
    ax.set_title("Memory projection per deployment preset")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="preset")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)


def _md(df: pd.DataFrame, floatfmt=".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(points: pd.DataFrame) -> pd.DataFrame:
    """Macro average over keywords: model × FA/h → FRR, relative change vs float, CI."""
    agg = points.groupby(["model", "fa_per_hour"], sort=False).agg(
        frr=("frr", "mean"), frr_rel_change=("frr_rel_change", "mean"), ci_low=("ci_low", "mean"),
        ci_high=("ci_high", "mean")).reset_index()
    return agg


def deployment_table(metrics: dict, names) -> pd.DataFrame:
    """One row per model with ``metrics[name]["deployment"]`` (written by the training run's export step)."""
    rows = []
    for name in names:
        d = metrics.get(name, {}).get("deployment")
        if not d or "skipped" in d:
            continue
        rows.append({"model": name, "int8_tflite_bytes": d["int8_bytes"], "vs_float32_tflite": d["int8_vs_float32"],
                     "keras_test_accuracy": d.get("keras_test_accuracy", np.nan),
                     "litert_int8_test_accuracy": d.get("int8_test_accuracy", np.nan),
                     "within_one_step": d["within_one_step"], "max_error_steps": d["max_error_steps"],
                     "saturated": d.get("saturated", np.nan),
                     "int4_tflite_bytes": d.get("int4_bytes"), "core_tflite_bytes": d.get("core_bytes"),
                     **{f"{k}_payload_bytes": v for k, v in d.get("packed_bytes", {}).items()}})
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c.endswith("_bytes")]:
        df[col] = df[col].astype("Int64")  # whole bytes; <NA> where a file was not written
    return df


def classification_table(clip_metrics: dict, names) -> pd.DataFrame:
    """One row per model with per-split top-1 accuracy and its 95 % interval (from the run's ``metrics.json``)."""
    rows = []
    for name in names:
        m = clip_metrics.get(name, {})
        row = {"model": name}
        for split in ("validation", "test"):
            c = m.get(f"{split}_classification")
            if c:
                row[f"{split}_top1"] = c["accuracy"]
                row[f"{split}_ci95"] = f"[{c['accuracy_ci95'][0]:.4f}, {c['accuracy_ci95'][1]:.4f}]"
                row[f"{split}_clips"] = c["clips"]
        if len(row) > 1:
            rows.append(row)
    return pd.DataFrame(rows)


def write_report(results, out_dir: str, *, title: str, command: str, streams_info: dict,
                 clip_metrics: dict | None = None, label_names=None) -> dict:
    """Write report.md/.html, CSVs and PNGs to ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    points = relative_to_float(pd.concat([r.points for r in results], ignore_index=True),
                               reference=results[0].name)
    memory = pd.concat([r.memory for r in results], ignore_index=True)
    keywords = list(results[0].curves)
    paths = {"md": os.path.join(out_dir, "report.md"), "html": os.path.join(out_dir, "report.html"),
             "points": os.path.join(out_dir, "operating_points.csv"), "memory": os.path.join(out_dir, "memory.csv"),
             "det_png": os.path.join(out_dir, "det.png"), "memory_png": os.path.join(out_dir, "memory.png")}
    points.to_csv(paths["points"], index=False)
    memory.to_csv(paths["memory"], index=False)
    for r in results:
        pd.concat([c.to_frame().assign(keyword=k) for k, c in r.curves.items()]).to_csv(
            os.path.join(out_dir, f"det_{r.name.replace(' ', '_')}.csv"), index=False)
    plot_det(results, paths["det_png"], keywords)
    plot_memory(memory, paths["memory_png"])

    summary = summary_table(points)
    latency = pd.concat([r.latency for r in results if r.latency is not None], ignore_index=True)
    latency.to_csv(os.path.join(out_dir, "latency.csv"), index=False)
    clip = pd.DataFrame([{"model": r.name, **{k: (clip_metrics or {}).get(r.name, {}).get(k, np.nan)
                                             for k in ("test_accuracy", "test_clips")},
                          "scan_seconds": r.scan_seconds, "streaming": r.streaming} for r in results])
    md = [f"# {title}", "", f"Generated by `{command}`.", "",
          f"Test streams: {streams_info['streams']} streams, {streams_info['hours']:.3f} h of audio, "
          f"{streams_info['occurrences']} keyword occurrences ({', '.join(keywords)}), built from the "
          f"{streams_info['split']!r} split (clips never seen in training; segment manifest `streams.json`) with "
          f"background noise ({streams_info.get('noise', 'coloured noise')}) {streams_info['snr_db']} dB below the "
          f"speech; model evaluated every {streams_info['hop_s'] * 1000:.0f} ms, posteriors smoothed "
          f"over {streams_info['smoothing_s']} s, refractory {streams_info['refractory_s']} s.", "",
          "## DET curves", "", "![DET curves](det.png)", "",
          f"## Operating points (FRR at fixed false accepts per hour{', mean over keywords' if len(keywords) > 1 else ''})",
          "", "`frr_rel_change`: relative FRR change against the first model "
          f"(`{results[0].name}`); CI: {int(100 * 0.95)} % bootstrap over streams.", "",
          _md(summary), "", "Per keyword: `operating_points.csv`; full curves: `det_<model>.csv`.", "",
          "## Detection latency", "", "Keyword end → first detection inside the hit window, at the threshold of "
          "each operating point (the deployable grid threshold with FA/h at most the target), over the detected "
          "occurrences; negative: fired before the keyword ended.", "", _md(latency, ".3f"), "",
          "## Memory projections", "", "![memory](memory.png)", "", _md(memory, ".5g"), "",
          "## Clip-level test accuracy and scan time", "", "`streaming`: `stateful`: the model ran frame-synchronously "
          "with state (`kws_quant.models.stream_state`), `window`: re-run on a sliding window.", "",
          _md(clip, ".4f"), ""]
    classes = classification_table(clip_metrics or {}, [r.name for r in results])
    if len(classes) and label_names:
        from eval.classification import plot_confusion

        paths["confusion_png"] = os.path.join(out_dir, "confusion.png")
        split = "validation" if any("validation_classification" in clip_metrics.get(r.name, {})
                                    for r in results) else "test"
        matrices = {r.name: clip_metrics[r.name][f"{split}_classification"]["confusion"] for r in results
                    if f"{split}_classification" in clip_metrics.get(r.name, {})}
        plot_confusion(matrices, label_names, paths["confusion_png"],
                       title=f"{split} split (speakers never seen in training)")
        md += [f"## {len(label_names)}-class top-1 accuracy (clips of speakers never seen in training)", "",
               "95 % Wilson intervals. The validation and test splits hold different speakers; neither chose any "
               "training setting or checkpoint (fixed epochs, last epoch kept).", "", _md(classes, ".4f"), "",
               "![confusion matrices](confusion.png)", ""]
    deploy = deployment_table(clip_metrics or {}, [r.name for r in results])
    if len(deploy):
        md += ["## Deployment exports (LiteRT int8, checked on the test clips)", "",
               "Written by the training run into `<phase>/export/` (`kws_quant.export.deployment`): `int8.tflite` "
               "(exact integer codes), `int4.tflite` (≤4-bit kernels packed), `core.tflite` + `core.front_end.json` "
               "(all-int8 model, per-frame front end split off) and the bit-packed payloads; for a zoo model "
               "`stream_int8.tflite` (one hop per invoke, int8 state in and out; its `within_one_step` covers the "
               "logits of every step of each test clip streamed from zero state) and `window_int8.tflite`. "
               "`within_one_step`: "
               "share of the LiteRT logits within one int8 output step of the Keras model's; `saturated`: share of "
               "the Keras logits beyond the int8 output range (calibrated on training and validation windows, "
               "widened by `config.export.output_margin`), which LiteRT clips.", "",
               _md(deploy, ".4g"), ""]
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    html = ["<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
            f"<h1>{title}</h1><p>Generated by <code>{command}</code>.</p>", "<h2>DET curves</h2>",
            "<img src='det.png' alt='DET curves'>", "<h2>Operating points</h2>",
            summary.to_html(index=False, float_format="%.4g"), "<h2>Memory projections</h2>",
            "<img src='memory.png' alt='memory'>", memory.to_html(index=False, float_format="%.5g"),
            "<h2>Clip-level test accuracy</h2>", clip.to_html(index=False, float_format="%.4f")]
    if len(deploy):
        html += ["<h2>Deployment exports</h2>", deploy.to_html(index=False, float_format="%.4g")]
    html.append("</body></html>")
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write("\n".join(html))
    return paths


def report_run(run_dir: str, out_dir: str | None = None, names=None, stream_cfg=None, thresholds=None,
               fa_targets=None, n_boot: int = 200, command: str = "", skip_bad_files=False,
               litert: bool = True, stream_overrides: dict | None = None, data_dir: str | None = None,
               streaming: str = "auto") -> dict:
    """Build (or reuse) the test streams of a run's data and report every (or the named) trained model of it.

    ``stream_cfg`` defaults to the run's ``config.report`` with ``stream_overrides`` (StreamConfig fields); with ``config.report.dataset_noise`` the streams' noise
    bed is the dataset's own noise recordings. The stream plan is saved as ``<out>/streams.json`` and reused while
    its settings match. ``litert``: also score each phase's exported ``export/int8.tflite`` (as
    ``<phase> int8 LiteRT``), one window per invoke as on the device; a zoo model's ``export/stream_int8.tflite``
    one hop per invoke with its int8 state, when the streams' hop is the model's. ``streaming``: ``"auto"`` runs a model with a
    frame-synchronous form with its state (the zoo), ``"window"`` re-runs every model on a sliding window.

    ``data_dir``: evaluate on another folder of the run's layout instead (a user's own recordings): every clip of it
    is test material, scored with the run's features and labels (audio at another rate is resampled, and the report
    says so); the report goes to ``<run_dir>/eval_<folder>`` unless ``out_dir`` is given, with each model's top-1
    accuracy and confusion matrix on the folder.
    """
    from eval.kws_streams import (ClipLoader, StreamConfig, load_plan, plan_streams, render_streams, save_plan)
    from eval.streaming import validate_thresholds
    from kws_quant.features import FeatureConfig
    from kws_quant.data.from_config import load_manifest

    from eval.folder_eval import folder_clip_metrics, folder_config, note_resampling, run_labels

    cfg, paths = load_run(run_dir, names)
    r = cfg["report"]
    if data_dir is not None:
        cfg = folder_config(cfg, data_dir)
        out_dir = out_dir or os.path.join(run_dir, f"eval_{os.path.basename(os.path.normpath(data_dir))}")
    thresholds = validate_thresholds(default_thresholds() if thresholds is None else thresholds)
    fa_targets = tuple(r["fa_targets"]) if fa_targets is None else tuple(fa_targets)
    manifest, label_names, keyword_labels, noises = load_manifest(cfg)
    if data_dir is not None:
        manifest = manifest.assign(split="test")
        label_names = run_labels(paths, label_names)
        extra = sorted(set(manifest["label"]) - set(label_names))
        if extra:
            raise ValueError(f"{data_dir}: label(s) {extra} are not among the run's labels {label_names}")
        note_resampling(manifest["path"], cfg["features"]["sample_rate"])
    stream_cfg = stream_cfg or dataclasses.replace(
        StreamConfig(negative_hours=r["negative_hours"], hop_frames=r["hop_frames"], snr_db=r["snr_db"],
                     seed=cfg["seed"]), **(stream_overrides or {}))
    if r["dataset_noise"] and noises and not stream_cfg.noise_paths:
        stream_cfg = dataclasses.replace(stream_cfg, noise_paths=tuple(noises))
    features = FeatureConfig(**cfg["features"])
    window = features.num_frames(int(round(cfg["data"]["clip_seconds"] * features.sample_rate)))
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    plan_path = os.path.join(out_dir, "streams.json")
    plan = load_plan(plan_path) if os.path.isfile(plan_path) else None
    if plan is None or plan["settings"] != stream_cfg.plan_settings() or plan["sample_rate"] != features.sample_rate:
        if plan is not None:
            print(f"{plan_path}: made with other stream settings; planning the streams again")
        plan = plan_streams(manifest, "test", keyword_labels, features.sample_rate, stream_cfg,
                            ClipLoader(features.sample_rate, skip_bad_files))
        save_plan(plan, plan_path)
    streams = render_streams(plan, skip_bad_files=skip_bad_files)
    occurrences = sum(len(s.events) for s in streams)
    if occurrences == 0:
        raise ValueError("the test split has no keyword clips: nothing to detect")
    results, models = [], {}
    for name, path in paths.items():
        labels_path = os.path.join(os.path.dirname(path), "labels.json")
        if os.path.isfile(labels_path):
            from kws_quant.run_files import read_json

            saved = read_json(labels_path, "the phase's label names", "delete it (the check of the label sets is then "
                              "skipped for this phase)", kind=list)
            if saved != label_names:
                raise ValueError(f"model {name!r} was trained on labels {saved}, the other models and the data "
                                 f"have {label_names}: mismatched label sets")
        model = models[name] = load_kws_model(path, window, features.n_mels, len(label_names))
        results.append(evaluate_model(name, model, streams, features, label_names, keyword_labels, stream_cfg,
                                      thresholds, fa_targets, n_boot, streaming=streaming))
        int8 = os.path.join(os.path.dirname(path), "export", "int8.tflite")
        stream_int8 = os.path.join(os.path.dirname(path), "export", "stream_int8.tflite")
        runner = None
        if litert and os.path.isfile(int8):
            from kws_quant.export.litert_stream import LiteRTStreamingRunner

            runner = LiteRTStreamingRunner(int8, hop_frames=stream_cfg.hop_frames)
        elif litert and os.path.isfile(stream_int8):  # a zoo model's streaming export: one hop per invoke
            from kws_quant.export.litert_stream import LiteRTStatefulRunner

            runner = LiteRTStatefulRunner(stream_int8)
            runner = runner if runner.hop == stream_cfg.hop_frames else None
        if runner is not None:
            results.append(evaluate_model(f"{name} int8 LiteRT", model, streams, features, label_names,
                                          keyword_labels, stream_cfg, thresholds, fa_targets, n_boot, runner=runner))
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        from kws_quant.run_files import read_json

        clip = read_json(metrics_path, "the run's metrics", "delete it and run kws_quant.train again with the same "
                         "command: it evaluates the finished phases again")
    else:
        clip = {}
    if data_dir is not None:  # this folder's clip metrics, not the training run's
        clip = folder_clip_metrics(cfg, manifest, label_names, models, features, skip_bad_files)
    info = {"streams": len(streams), "hours": sum(len(s.audio) / s.sample_rate for s in streams) / 3600,
            "occurrences": occurrences, "split": "test", "snr_db": stream_cfg.snr_db,
            "noise": ", ".join(os.path.basename(p) for p in stream_cfg.noise_paths) or "coloured noise",
            "hop_s": stream_cfg.hop_frames * features.hop_length / features.sample_rate,
            "smoothing_s": stream_cfg.smoothing_s, "refractory_s": stream_cfg.refractory_s}
    title = f"KWS report: {cfg['name']}" + (f" on {cfg['data']['data_dir']}" if data_dir is not None else "")
    return write_report(results, out_dir, title=title, command=command or
                        f"python -m eval.report --run_dir={run_dir}", streams_info=info, clip_metrics=clip,
                        label_names=label_names)


def main(argv):
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    thresholds = None if not f.thresholds else [float(t) for t in f.thresholds.split(",")]
    overrides = {k: getattr(f, k) for k in ("stream_seconds", "negative_hours", "hop_frames", "snr_db",
                                            "refractory_s", "smoothing_s") if getattr(f, k) is not None}
    fa_targets = tuple(float(x) for x in f.fa_targets.split(",")) if f.fa_targets else None
    paths = report_run(f.run_dir, f.out, f.models.split(",") if f.models else None, None, thresholds, fa_targets,
                       f.n_boot, command="python -m eval.report " + " ".join(sys.argv[1:]),
                       skip_bad_files=f.skip_bad_files, litert=f.litert, stream_overrides=overrides,
                       data_dir=f.data_dir, streaming=f.streaming)
    print(f"report written: {paths['md']} (and {os.path.basename(paths['html'])}, CSVs, "
          f"{os.path.basename(paths['det_png'])}, {os.path.basename(paths['memory_png'])})")


def run():
    """Console entry point ``kws-quant-report``."""
    from absl import app, flags

    flags.DEFINE_string("run_dir", None, "Training run directory (kws_quant.train --workdir).", required=True)
    flags.DEFINE_string("data_dir", None, "Evaluate the run's models on this folder (same layout as the run's data) "
                        "instead of the run's test split; report in <run_dir>/eval_<folder>.")
    flags.DEFINE_string("models", "", "Comma-separated phases to compare (default: float and every QAT recipe).")
    flags.DEFINE_string("out", None, "Output folder (default: <run_dir>/report).")
    flags.DEFINE_float("stream_seconds", None, "Length of each test stream, seconds (default 60).")
    flags.DEFINE_float("negative_hours", None, "Extra keyword-free test audio, hours (sets the FA/h resolution; "
                       "default: the run's config.report.negative_hours).")
    flags.DEFINE_integer("hop_frames", None, "Feature frames between model evaluations (default: the run's config).")
    flags.DEFINE_float("snr_db", None, "Background noise level of the streams, dB below the speech (default: the "
                       "run's config.report.snr_db).")
    flags.DEFINE_float("smoothing_s", None, "Posterior smoothing window, seconds (default 0.1).")
    flags.DEFINE_float("refractory_s", None, "Refractory period after a detection, seconds (default 1).")
    flags.DEFINE_string("thresholds", "", "Comma-separated threshold grid in [0, 1] (default: dense near 1).")
    flags.DEFINE_string("fa_targets", "", "False accepts per hour at which FRR is reported (default: the run's "
                        "config.report.fa_targets).")
    flags.DEFINE_bool("litert", True, "Also score each phase's export/int8.tflite with the LiteRT interpreter.")
    flags.DEFINE_integer("n_boot", 200, "Bootstrap resamples for confidence intervals.")
    flags.DEFINE_enum("streaming", "auto", ["auto", "window"], "auto: models with a frame-synchronous form (the zoo) "
                      "run with their state; window: every model re-runs on a sliding window.")
    flags.DEFINE_bool("skip_bad_files", False, "Skip unreadable audio instead of failing.")

    def guarded(argv):
        try:
            main(argv)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(2)

    from kws_quant.usage import print_help_and_exit, wants_help

    if wants_help(sys.argv):
        print_help_and_exit(sys.argv)
    app.run(guarded)


if __name__ == "__main__":
    run()
