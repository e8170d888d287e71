"""The KWS experiment behind ``python -m kws_quant.train``: data → float model → QAT twins → test metrics →
deployment exports (LiteRT int8, split front end, bit-packed payloads) checked on the test split."""
from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from kws_quant import data as kd
from kws_quant import qat
from kws_quant.distributed import make_strategy, remove_worker_workdir, role_of, worker_workdir
from kws_quant.features import FeatureConfig
from kws_quant.models import KWSModelConfig, build_kws_model
from kws_quant.data.from_config import SOURCES, hold_out_validation, load_manifest, oversample  # noqa: F401
from kws_quant.experiments.training import (PhasePlan, RunDir, check_training_config, ptq_phase_name,  # noqa: F401
                                            resumable_fit, run_phase, training_seed, transfer_weights, write_json)

FLOAT_PHASE = "float"


@dataclasses.dataclass
class KWSData:
    """Everything the phases share: manifest, label order, feature settings and the three datasets."""

    manifest: object
    label_names: list
    keyword_labels: list
    features: FeatureConfig
    window_frames: int
    train: object
    validation: object
    test: object
    steps_per_epoch: int


def check_config(cfg: dict) -> None:
    """Refuse values that make no sense before anything runs (one error naming the key and value)."""
    check_training_config(cfg)
    d = cfg["data"]
    c = d["clip_seconds"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c > 0):
        raise ValueError(f"config.data.clip_seconds={c!r} must be a finite number of seconds > 0")
    if d["feature_cache"] not in kd.CACHE_MODES:
        raise ValueError(f"config.data.feature_cache={d['feature_cache']!r} is not one of {list(kd.CACHE_MODES)}")
    feats = FeatureConfig(**cfg["features"])
    model_config(cfg, feats.num_frames(int(round(c * feats.sample_rate))), feats.n_mels)  # arch, widths, window


def model_config(cfg: dict, window_frames: int, n_mels: int) -> KWSModelConfig:
    """``config.model`` as a checked :class:`KWSModelConfig` (errors name ``config.model``)."""
    m = cfg["model"]
    try:
        return KWSModelConfig(window_frames=window_frames, n_mels=n_mels, arch=m["arch"], pool=m["pool"],
                              hidden=tuple(m["hidden"]), dropout=m["dropout"], kernel_size=m.get("kernel_size", 0),
                              hop=m.get("hop", 2))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None


def prepare_data(cfg: dict, skip_bad_files: bool = False) -> KWSData:
    manifest, label_names, keyword_labels, noises = load_manifest(cfg)
    d = cfg["data"]
    feats = FeatureConfig(**cfg["features"])
    window = feats.num_frames(int(round(d["clip_seconds"] * feats.sample_rate)))
    augment = kd.AugmentConfig(noises=tuple(noises), snr_db=tuple(d["snr_db"]), gain_db=tuple(d["gain_db"]),
                               max_shift=int(d["max_shift_seconds"] * feats.sample_rate),
                               speed=tuple(d["speed"])) if d["augment"] else None
    common = dict(label_names=label_names, feature_cfg=feats, clip_seconds=d["clip_seconds"],
                  batch_size=d["batch_size"], seed=training_seed(cfg), skip_bad_files=skip_bad_files,
                  trim_db=d["trim_db"],
                  cache=d["feature_cache"], cache_dir=d["feature_cache_dir"] or None)
    masks = d["spec_augment"]
    spec = kd.SpecAugmentConfig(**masks) if d["augment"] and (masks["time_masks"] or masks["freq_masks"]) else None
    train = kd.make_dataset(manifest, "train", augment=augment, spec_augment_cfg=spec, **common)
    n_train = int((manifest["split"] == "train").sum())
    return KWSData(manifest, label_names, keyword_labels, feats, window, train,
                   kd.make_dataset(manifest, "validation", **common), kd.make_dataset(manifest, "test", **common),
                   math.ceil(n_train / d["batch_size"]))


def build_model(cfg: dict, data: KWSData, recipe) -> keras.Model:
    mcfg = model_config(cfg, data.window_frames, data.features.n_mels)
    return build_kws_model(mcfg, len(data.label_names), recipe, name=f"kws_{recipe}")


def compile_model(model, learning_rate: float, decay_steps: int, jit_compile: bool = True,
                  ema_momentum: float = 0.0) -> None:
    """Adam with cosine decay; ``ema_momentum`` > 0 keeps an exponential moving average of the trainable weights
    (Keras' ``use_ema``: the average is what ``fit`` leaves in the model, what validation sees through
    :func:`kws_quant.experiments.training.ema_callbacks`, and what a resumed run restores with the optimizer's
    state). XLA fuses the quantizers' elementwise chains: a QAT step then costs what a float step costs
    (docs/bench_qat_step.md); Keras leaves XLA off on CPU by default. XLA is left off when the current strategy
    spans several replicas: a compiled step cannot reach variables on another logical CPU, and TensorFlow has no XLA
    collectives on CPU devices for multi-worker training."""
    jit_compile = jit_compile and tf.distribute.get_strategy().num_replicas_in_sync == 1
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(decay_steps, 1), alpha=0.05)
    optimizer = keras.optimizers.Adam(schedule, use_ema=ema_momentum > 0, ema_momentum=ema_momentum or 0.99)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile)


def evaluate(model, data: KWSData) -> dict:
    """Test accuracy, the clip-level keyword decision errors at argmax, and per split (test, validation: speakers
    never seen in training) the top-1 accuracy with its 95 % interval and the confusion matrix."""
    from eval.classification import classification_metrics, predict

    scored = {"validation": predict(model, data.validation), "test": predict(model, data.test)}
    out = {f"{split}_classification": classification_metrics(labels, logits, len(data.label_names))
           for split, (logits, labels) in scored.items()}
    logits, labels = scored["test"]
    pred = logits.argmax(1)
    kw = np.isin(labels, [data.label_names.index(k) for k in data.keyword_labels])
    hit = pred == labels
    false_accepts = (~kw) & np.isin(pred, [data.label_names.index(k) for k in data.keyword_labels])
    return {"test_accuracy": float(hit.mean()), "test_clips": int(len(labels)),
            "keyword_frr": float(1 - hit[kw].mean()) if kw.any() else float("nan"),
            "keyword_far": float(false_accepts[~kw].mean()) if (~kw).any() else float("nan"), **out}


def train_phase(run: RunDir, phase: str, recipe, cfg: dict, data: KWSData, strategy, init=None,
                verbose: int = 1) -> keras.Model:
    """Train (or resume, or reuse) one phase (:func:`kws_quant.experiments.training.run_phase`); record its
    metrics; return the trained model. ``init``: a model whose weights start this one (float → QAT)."""
    t = cfg["train"]
    is_float = phase == FLOAT_PHASE
    stages = (t["float_epochs"], 0) if is_float else (t["stage1_epochs"], t["stage2_epochs"])

    def build():
        model = build_model(cfg, data, recipe)
        compile_model(model, t["learning_rate"] if is_float else t["qat_learning_rate"],
                      sum(stages) * data.steps_per_epoch, t["jit_compile"], t.get("ema_momentum", 0.0))
        return model, [], {}

    def prepare(model):
        write_json(os.path.join(run.phase(phase), "labels.json"), data.label_names)  # the report checks label sets
        if init is not None:
            transfer_weights(init, model)

    plan = PhasePlan(phase, stages, not is_float, build, lambda model: evaluate(model, data), "test_accuracy",
                     facts=lambda model: {"recipe": recipe, "parameters": model.count_params()}, prepare=prepare,
                     recipe=recipe)
    return run_phase(run, plan, strategy, data.train, data.validation, verbose)


def ptq_phase(run: RunDir, recipe, cfg: dict, data: KWSData, strategy, float_model) -> keras.Model:
    """Post-training quantization baseline ``ptq_<recipe>``: the float model's weights in the recipe's model, ranges
    calibrated on training windows (:func:`kws_quant.qat.calibrate`), fully quantized, no training: what QAT buys is
    the difference to the QAT twin of the same recipe."""
    phase = ptq_phase_name(recipe)
    if run.is_complete(phase):
        model = keras.saving.load_model(run.model_path(phase))
    else:
        with strategy.scope():
            model = build_model(cfg, data, recipe)
        write_json(os.path.join(run.phase(phase), "labels.json"), data.label_names)
        transfer_weights(float_model, model)
        windows = [x.numpy() for x, _ in data.train.take(-(-cfg["qat"]["ptq_calibration_windows"] //
                                                               cfg["data"]["batch_size"]))]
        qat.calibrate(model, np.concatenate(windows)[:cfg["qat"]["ptq_calibration_windows"]])
        model.save(run.model_path(phase))
        print(f"\n== phase {phase}: float weights, recipe {recipe!r}, calibrated on "
              f"{cfg['qat']['ptq_calibration_windows']} training windows, no training ==")
    if "test_accuracy" not in run.load_metrics().get(phase, {}):
        run.update_metrics(phase, {"recipe": recipe, "parameters": model.count_params(), "epochs": 0,
                                   "post_training": True, "stage": qat.get_stage(model), **evaluate(model, data)})
    return model


def export_phase(run: RunDir, phase: str, model, data: KWSData, ecfg) -> None:
    """Write the deployment files of a finished QAT phase into ``<phase>/export/`` and record what they measure
    on the test split (:func:`kws_quant.export.deployment.export_for_deployment`) as ``metrics[phase]["deployment"]``.
    Skipped when already recorded (resume) and, with a note, for a model that did not reach QAT stage 2."""
    if "deployment" in run.load_metrics().get(phase, {}):
        return
    if qat.get_stage(model) != 2:
        run.update_metrics(phase, {"deployment": {"skipped": f"QAT stage {qat.get_stage(model)}: the int8 export "
                                                             "needs stage 2 (config.train.stage2_epochs > 0)"}})
        return
    from kws_quant.export.deployment import export_for_deployment
    from kws_quant.export.tflite import UnsupportedModelError

    def windows(dataset, limit=None):
        xs, ys, n = [], [], 0
        for x, y in dataset:
            xs.append(x.numpy())
            ys.append(y.numpy())
            n += len(xs[-1])
            if limit and n >= limit:
                break
        return (np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]) if xs else (None, None)

    # the logits' int8 range: validation and (augmented) training windows, never the test split
    parts = [w for w in (windows(data.validation, 512)[0], windows(data.train, 1536)[0]) if w is not None]
    calibration = np.concatenate(parts)
    x, y = windows(data.test)
    if x is None:
        run.update_metrics(phase, {"deployment": {"skipped": "the test split is empty"}})
        return
    print(f"\n== phase {phase}: deployment exports into {os.path.join(run.phase(phase), 'export')} ==")
    try:
        result = export_for_deployment(model, os.path.join(run.phase(phase), "export"), calibration, x, y,
                                       int4=ecfg["int4"], split_front_end=ecfg["split_front_end"],
                                       pack_presets=tuple(ecfg["pack_presets"]), output_margin=ecfg["output_margin"],
                                       features=data.features)
    except UnsupportedModelError as e:  # e.g. a layer the export lacks: trained models are kept, said why
        print(f"deployment export skipped: {e}")
        run.update_metrics(phase, {"deployment": {"skipped": f"the LiteRT export does not support this model: {e}"}})
        return
    name = "stream_int8.tflite" if result.get("form") == "streaming" else "int8.tflite"
    print(f"{name} {result['int8_bytes']:,} bytes ({result['int8_vs_float32']:.2f}x smaller than float32); "
          f"LiteRT test accuracy {result['int8_test_accuracy']:.4f} (Keras {result['keras_test_accuracy']:.4f}); "
          f"{100 * result['within_one_step']:.2f}% of logits within one output step "
          f"({100 * result['saturated']:.2f}% beyond the int8 output range)")
    run.update_metrics(phase, {"deployment": result})


def run(cfg: dict, workdir: str, strategy="default", skip_bad_files: bool = False, verbose: int = 1) -> dict:
    """Run every phase of the experiment in ``workdir``; returns the metrics of all phases.

    ``strategy``: a ``tf.distribute.Strategy`` or its name (:func:`kws_quant.distributed.make_strategy`; made before
    any TensorFlow op here). Under a multi-worker strategy only the chief writes ``workdir``; the other workers train
    in step with it, write into their own temporary folder and skip the report and exports.
    """
    dist = make_strategy(strategy) if isinstance(strategy, str) else strategy
    role = role_of(dist)
    check_config(cfg)
    run_dir = RunDir(worker_workdir(workdir, role))
    keras.utils.set_random_seed(training_seed(cfg))
    data = prepare_data(cfg, skip_bad_files)
    run_dir.save_config(cfg)  # after the inputs were checked: a failed start does not block its corrected rerun
    float_model = train_phase(run_dir, FLOAT_PHASE, "float", cfg, data, dist, verbose=verbose)
    for recipe in cfg["qat"]["ptq_recipes"]:
        ptq_phase(run_dir, recipe, cfg, data, dist, float_model)
    trained = {}
    for recipe in cfg["qat"]["recipes"]:
        init = float_model if cfg["train"]["qat_init_from_float"] else None
        trained[recipe] = train_phase(run_dir, recipe, recipe, cfg, data, dist, init=init, verbose=verbose)
    metrics = run_dir.load_metrics()
    if not role.is_chief:  # the chief writes the report and exports; no collective op runs past this point
        remove_worker_workdir(workdir, role)
        return metrics
    if cfg["export"]["enabled"]:  # after all training: reading the datasets must not change a later phase's batches
        for recipe, model in trained.items():
            export_phase(run_dir, recipe, model, data, cfg["export"])
    if cfg["report"]["enabled"]:
        from eval.report import report_run

        paths = report_run(workdir, n_boot=cfg["report"]["n_boot"], skip_bad_files=skip_bad_files)
        print(f"\nreport: {paths['md']}")
    return run_dir.load_metrics()


def format_summary(metrics: dict, workdir: str, seconds: float) -> str:
    """A markdown table of the phases plus where the results are."""
    def rate(v):  # NaN: undefined (no keyword clips, or no non-keyword clips, in the test split)
        return "-" if v != v else f"{v:.4f}"

    lines = ["", "| model | test accuracy | keyword FRR | keyword FAR | parameters |", "|---|---|---|---|---|"]
    for phase, m in metrics.items():
        lines.append(f"| {phase} | {m['test_accuracy']:.4f} | {rate(m['keyword_frr'])} | {rate(m['keyword_far'])} | "
                     f"{m.get('parameters', 0):,} |")
    lines += ["", f"Results in {workdir}/ (metrics.json, config.json, <phase>/model.keras, <phase>/history.csv, "
              f"<phase>/tensorboard). Total wall time {seconds:.0f} s."]
    return "\n".join(lines)
