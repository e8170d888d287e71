"""The ASR experiment behind ``python -m asr_ext.train``: corpus → float RNN-T → QAT twins → test WER/CER.

Phases and the run directory are those of the KWS experiment (:mod:`kws_quant.experiments.training`): ``float`` first, then one
phase per recipe in ``config.qat.recipes`` and per method in ``config.qat.methods`` (:mod:`asr_ext.experiments.methods`: S8BQAT,
GQ, native-int Conformer, NNA), initialised from the float model and trained with the two-stage schedule
(:class:`kws_quant.qat.TwoStageQAT`: ``stage1_epochs`` with weight quantizers, then ``stage2_epochs`` with
everything quantized). A method on another encoder first gets that encoder's float phase (``float_conformer``).
Each phase ends with greedy (and optionally beam-search) decoding of the test split; the metrics (with weight bits
and weight memory) land in ``metrics.json`` and the hypotheses in ``<phase>/test_hypotheses.tsv``.
"""
from __future__ import annotations

import dataclasses
import os
import time

import keras
import ml_collections
import pandas as pd

from asr_ext import data as ad
from asr_ext import decoding
from asr_ext.experiments import methods
from asr_ext.models import RNNTConfig, WarmupCosine
from asr_ext.rnnt_loss import RNNTLoss
from asr_ext.text import CharVocabulary
from kws_quant.distributed import make_strategy, remove_worker_workdir, role_of, worker_workdir
from kws_quant.features import FeatureConfig, feature_config_defaults
from kws_quant.experiments.training import PhasePlan, RunDir, check_training_config, run_phase

FLOAT_PHASE = "float"
SOURCES = ("synthetic", "fsdd", "librispeech", "sphinx")


def asr_config() -> ml_collections.ConfigDict:
    """Defaults shared by the ASR configs in ``configs/asr_*.py``; every field can be overridden on the command line
    (``--config.train.float_epochs=3``)."""
    c = ml_collections.ConfigDict()
    c.name = "asr"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"             # synthetic | fsdd | librispeech | sphinx (AN4)
    c.data.data_dir = ""                    # fsdd / librispeech root; --data_dir sets it
    c.data.batch_size = 32
    c.data.buckets = 5                      # length buckets (quantiles of the split's lengths); 1: none
    c.data.cmvn = True                      # per-utterance mean/variance normalisation of the log-mels
    c.data.dynamic_range_db = 0.0           # > 0: clamp log-mels this many dB below the utterance maximum
    c.data.cache_dir = ""                   # synthetic audio cache; empty: ~/.cache/kws_quant/asr_synthetic
    c.data.synthetic = ml_collections.ConfigDict(dict(
        utterances=2000, digit_fraction=0.5, digits=(2, 5), sentence_words=(2, 5), seed=0))
    c.data.fsdd = ml_collections.ConfigDict(dict(
        utterances=(3000, 300, 500), min_digits=2, max_digits=5, gap_ms=(50.0, 300.0), test_speakers=("jackson",),
        validation_fraction=0.1,
        synthetic_train_utterances=0))      # > 0: add eSpeak digit strings (24 voices) to the training split
    c.data.librispeech = ml_collections.ConfigDict(dict(fractions=(0.8, 0.1, 0.1), max_utterances=0))
    c.data.sphinx = ml_collections.ConfigDict(dict(fractions=(0.7, 0.1, 0.2)))  # AN4 has no test set here: speakers

    c.augment = ml_collections.ConfigDict(dict(
        enabled=True, speed=(0.9, 1.1), gain_db=(-6.0, 6.0), noise_prob=0.5, snr_db=(10.0, 30.0), freq_masks=2,
        freq_mask_width=6, time_masks=2, time_mask_fraction=0.05, mel_warp=(1.0, 1.0)))

    c.features = ml_collections.ConfigDict(feature_config_defaults())  # kws_quant.features.FeatureConfig

    c.model = ml_collections.ConfigDict(dict(
        encoder="lstm", frame_stack=2, lstm_units=(192, 192), reduce_after=(0,), reduce_factor=2,
        conformer_dim=144, conformer_blocks=2, conformer_heads=4, conformer_ff_mult=4, conformer_kernel=15,
        embed_dim=32, pred_units=(128,), joint_units=160, dropout=0.1))

    c.train = ml_collections.ConfigDict()
    c.train.float_epochs = 15
    c.train.learning_rate = 2e-3
    c.train.warmup_epochs = 1.0
    c.train.clipnorm = 5.0
    c.train.stage1_epochs = 3               # QAT: weights quantized (METHODS §3 stage 1)
    c.train.stage2_epochs = 3               # QAT: + inputs, activations, biases (stage 2)
    c.train.qat_learning_rate = 5e-4
    c.train.qat_init_from_float = True
    c.train.ema_momentum = 0.0              # > 0: validate and keep the weights' moving average
    c.train.other_float_epochs = 0          # float_<encoder> phase of a method on another encoder; 0: float_epochs

    c.decode = ml_collections.ConfigDict(dict(
        max_symbols=5,                      # greedy: labels per encoder frame at most
        beam_size=4,                        # 0: no beam search
        beam_max_symbols=5,
        beam_utterances=0))                 # beam-decode only the first N test utterances (0: all)

    c.qat = ml_collections.ConfigDict()
    c.qat.recipes = ("tanh4",)              # kws_quant.models.recipes presets, one QAT model each
    c.qat.methods = ()                      # asr_ext.experiments.methods names (s8bqat5, gq4, gq_mixed14, native4_conformer, ...)
    for key, options in methods.OPTIONS.items():  # their settings: config.qat.s8bqat.lam, config.qat.gq.tau_min, ...
        c.qat[key] = ml_collections.ConfigDict(options)
    return c


@dataclasses.dataclass
class ASRData:
    """What the phases share: the manifest, vocabulary, feature and model settings, and the datasets."""

    manifest: object
    vocab: CharVocabulary
    features: FeatureConfig
    model_config: RNNTConfig
    train: object
    validation: object
    steps_per_epoch: int
    summary: dict
    dataset_args: dict

    def test(self):
        """Test batches ``(x, y, ids)`` in a fixed order."""
        return ad.make_asr_dataset(self.manifest, "test", include_ids=True, **self.dataset_args)


def load_manifest(cfg: dict):
    d = cfg["data"]
    source = d["source"]
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    if source == "synthetic":
        s = d["synthetic"]
        scfg = ad.SyntheticASRConfig(utterances=s["utterances"], digit_fraction=s["digit_fraction"],
                                     digits=tuple(s["digits"]), sentence_words=tuple(s["sentence_words"]),
                                     sample_rate=cfg["features"]["sample_rate"], seed=s["seed"])
        return ad.synthetic_corpus(scfg, cache_dir=d["cache_dir"] or None)
    if not d["data_dir"]:
        raise ValueError(f"config.data.source={source!r} needs a dataset: pass --data_dir")
    if source == "fsdd":
        f = d["fsdd"]
        manifest = ad.fsdd_connected_digits(d["data_dir"], tuple(f["utterances"]), f["min_digits"],
                                            f["max_digits"], tuple(f["gap_ms"]), tuple(f["test_speakers"]),
                                            f["validation_fraction"], seed=cfg["seed"])
        if f["synthetic_train_utterances"]:  # optional: eSpeak voices as extra *training* speakers
            scfg = ad.SyntheticASRConfig(utterances=f["synthetic_train_utterances"], digit_fraction=1.0,
                                         digits=(f["min_digits"], f["max_digits"]), validation_voices=(),
                                         test_voices=(), sample_rate=cfg["features"]["sample_rate"],
                                         seed=cfg["seed"])
            extra = ad.synthetic_corpus(scfg, cache_dir=d["cache_dir"] or None)
            manifest = ad.check_manifest(pd.concat([manifest, extra], ignore_index=True))
        return manifest
    if source == "sphinx":
        return ad.read_sphinx_corpus(d["data_dir"], tuple(d["sphinx"]["fractions"]), cfg["seed"])
    ls = d["librispeech"]
    return ad.read_librispeech(d["data_dir"], tuple(ls["fractions"]), cfg["seed"], ls["max_utterances"] or None)


def check_config(cfg: dict) -> None:
    """Refuse values that make no sense before anything runs (one error naming the key and value)."""
    check_training_config(cfg, ("float_epochs", "stage1_epochs", "stage2_epochs", "other_float_epochs"))


def model_config(cfg: dict) -> RNNTConfig:
    m = dict(cfg["model"])
    return RNNTConfig(n_mels=cfg["features"]["n_mels"], **{k: tuple(v) if isinstance(v, list) else v
                                                           for k, v in m.items()})


def prepare_data(cfg: dict, manifest=None, training: bool = True) -> ASRData:
    """Datasets for ``cfg`` (its model's time reductions set the targets' logit lengths); ``manifest``: reuse one.
    ``training=False``: only the test split is needed (evaluating a finished run; ``train`` is then ``None``)."""
    manifest = load_manifest(cfg) if manifest is None else manifest
    vocab = CharVocabulary()
    feats = FeatureConfig(**cfg["features"])
    mcfg = model_config(cfg)
    d, a = cfg["data"], dict(cfg["augment"])
    augment = ad.ASRAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in a.items()
                                     if k != "enabled"}) if a.pop("enabled") else None
    assembler = ad.AudioAssembler(feats.sample_rate)
    common = dict(vocab=vocab, feature_cfg=feats, batch_size=d["batch_size"],
                  reduction_factors=mcfg.reduction_factors, seed=cfg["seed"], cmvn=d["cmvn"], assembler=assembler,
                  dynamic_range_db=d["dynamic_range_db"] or None,
                  num_buckets=d["buckets"])
    for split in ("train", "test") if training else ("test",):  # splits the phases need (validation: optional)
        if not (manifest["split"] == split).any():
            raise ValueError(f"the {d['source']} data has no {split} utterances; splits found: "
                             f"{sorted(manifest['split'].unique())}")
    if not training:
        return ASRData(manifest, vocab, feats, mcfg, None, None, 0, ad.split_summary(manifest), common)
    train = ad.make_asr_dataset(manifest, "train", augment=augment, **common)
    validation = ad.make_asr_dataset(manifest, "validation", **common) \
        if (manifest["split"] == "validation").any() else None
    # Checks every test transcript now, before any training time is spent.
    ad.encode_targets(manifest[manifest["split"] == "test"], vocab)
    return ASRData(manifest, vocab, feats, mcfg, train, validation, int(train.cardinality()),
                   ad.split_summary(manifest), common)


def compile_model(model, learning_rate: float, warmup_steps: int, total_steps: int, clipnorm: float,
                  ema_momentum: float = 0.0) -> None:
    """Adam with warm-up + cosine decay and global-norm clipping, ``RNNTLoss``; not XLA-compiled (the loss runs
    its own XLA kernels, and its input asserts stay active). The optimizer's variables are created here: created
    inside the first train step, they make TensorFlow trace that step twice. ``ema_momentum`` > 0: a moving
    average of the weights, validated and kept (as :func:`kws_quant.experiments.kws.compile_model`)."""
    optimizer = keras.optimizers.Adam(WarmupCosine(learning_rate, warmup_steps, total_steps),
                                      global_clipnorm=clipnorm or None, use_ema=ema_momentum > 0,
                                      ema_momentum=ema_momentum or 0.99)
    model.compile(optimizer, RNNTLoss(blank=0), jit_compile=False)
    optimizer.build(model.trainable_variables)


def evaluate(model, data: ASRData, cfg: dict, phase_dir: str | None = None) -> dict:
    """Greedy (and beam-search) decoding of the test split → WER/CER; writes ``test_hypotheses.tsv``."""
    dcfg = cfg["decode"]
    manifest_test = data.manifest[data.manifest["split"] == "test"].reset_index(drop=True)
    refs, hyps, beam_hyps, ids = [], [], [], []
    beam_left = dcfg["beam_utterances"] or len(manifest_test)
    start = time.perf_counter()
    greedy_seconds = beam_seconds = 0.0
    for x, _, idx in data.test():
        t0 = time.perf_counter()
        out, _ = decoding.greedy_decode(model, x["features"], x["feature_lengths"], dcfg["max_symbols"])
        greedy_seconds += time.perf_counter() - t0
        idx = idx.numpy()
        ids += idx.tolist()
        refs += [data.vocab.normalize(manifest_test["text"][i]) for i in idx]
        hyps += [data.vocab.decode(h) for h in out]
        if dcfg["beam_size"] and beam_left > 0:
            n = min(beam_left, len(idx))
            t0 = time.perf_counter()
            best, _ = decoding.beam_search(model, x["features"][:n], x["feature_lengths"][:n], dcfg["beam_size"],
                                           dcfg["beam_max_symbols"])
            beam_seconds += time.perf_counter() - t0
            beam_hyps += [data.vocab.decode(h) for h in best]
            beam_left -= n
    metrics = {f"test_{k}": v for k, v in decoding.error_rates(refs, hyps).items()}
    metrics["greedy_decode_seconds"] = round(greedy_seconds, 2)
    if beam_hyps:
        rates = decoding.error_rates(refs[:len(beam_hyps)], beam_hyps)
        metrics.update({"beam_wer": rates["wer"], "beam_cer": rates["cer"], "beam_utterances": len(beam_hyps),
                        "beam_size": dcfg["beam_size"], "beam_decode_seconds": round(beam_seconds, 2),
                        # greedy on the same utterances, for a like-for-like comparison
                        "greedy_wer_on_beam_utterances": decoding.error_rates(refs[:len(beam_hyps)],
                                                                              hyps[:len(beam_hyps)])["wer"]})
    metrics["examples"] = [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]
    metrics["eval_seconds"] = round(time.perf_counter() - start, 2)
    if phase_dir:
        with open(os.path.join(phase_dir, "test_hypotheses.tsv"), "w", encoding="utf-8") as f:
            f.write("utt_id\treference\tgreedy\tbeam\n")
            for j, (i, r, h) in enumerate(zip(ids, refs, hyps)):
                b = beam_hyps[j] if j < len(beam_hyps) else ""
                f.write(f"{manifest_test['utt_id'][i]}\t{r}\t{h}\t{b}\n")
    return metrics


def train_phase(run: RunDir, phase: str, recipe, cfg: dict, data: ASRData, strategy, init=None,
                verbose: int = 1) -> keras.Model:
    """Train (or resume, or reuse) one phase (:func:`kws_quant.experiments.training.run_phase`, the loop the KWS
    runner uses too); record its metrics; return the trained model. ``recipe``: ``"float"``, a recipe preset or a
    method name (:mod:`asr_ext.experiments.methods`); ``init``: the float model a QAT phase starts from."""
    t = cfg["train"]
    is_float = recipe == "float"
    if is_float:  # float_<encoder> phases (another encoder's float model) may have their own length
        field = "other_float_epochs" if phase != FLOAT_PHASE and t["other_float_epochs"] else "float_epochs"
        stages, key = (t[field], 0), f"train.{field}"
    else:
        stages, key = methods.stage_epochs(recipe, cfg)
    epochs = sum(stages)
    if epochs < 1 and not run.is_complete(phase):
        raise ValueError(f"phase {phase!r} has {epochs} epochs; set config.{key} to at least 1")

    def build():
        setup = methods.build(recipe, cfg, data, init, epochs, run.phase(phase))
        compile_model(setup.model, t["learning_rate"] if is_float else t["qat_learning_rate"],
                      int(t["warmup_epochs"] * data.steps_per_epoch) if is_float else 0,
                      epochs * data.steps_per_epoch, t["clipnorm"], t.get("ema_momentum", 0.0))
        return setup.model, setup.callbacks, setup.info

    def facts(model):
        return {"recipe": recipe, "encoder": data.model_config.encoder, "parameters": model.count_params(),
                **methods.weight_report(model)}

    plan = PhasePlan(phase, stages, not is_float, build, lambda model: evaluate(model, data, cfg, run.phase(phase)),
                     "test_wer", facts=facts, recipe=recipe)
    return run_phase(run, plan, strategy, data.train, data.validation, verbose)


def run(cfg: dict, workdir: str, strategy="default", verbose: int = 1) -> dict:
    """Run every phase of the experiment in ``workdir``; returns the metrics of all phases.

    ``strategy``: a ``tf.distribute.Strategy`` or its name (made before any TensorFlow op here); under a multi-worker
    strategy only the chief writes ``workdir`` (:mod:`kws_quant.distributed`).
    """
    dist = make_strategy(strategy) if isinstance(strategy, str) else strategy
    role = role_of(dist)
    check_config(cfg)
    run_dir = RunDir(worker_workdir(workdir, role))
    names = [*cfg["qat"]["recipes"], *cfg["qat"]["methods"]]
    for name in cfg["qat"]["methods"]:
        methods.parse(name)  # bad names fail before any training
    if len(set(names)) < len(names) or FLOAT_PHASE in names:
        raise ValueError(f"config.qat.recipes + config.qat.methods must name distinct QAT phases (not "
                         f"{FLOAT_PHASE!r}); got {names}")
    keras.utils.set_random_seed(cfg["seed"])
    data = prepare_data(cfg)
    run_dir.save_config(cfg)  # after the inputs were checked: a failed start does not block its corrected rerun
    run_dir.update_metrics("data", data.summary)
    floats = {}  # encoder -> (its data, its trained float model)

    def float_model(encoder):
        if encoder not in floats:
            own = encoder in (None, data.model_config.encoder)
            d = data if own else prepare_data({**cfg, "model": {**cfg["model"], "encoder": encoder}}, data.manifest)
            phase = FLOAT_PHASE if own else f"{FLOAT_PHASE}_{encoder}"
            floats[encoder] = d, train_phase(run_dir, phase, "float", cfg, d, dist, verbose=verbose)
        return floats[encoder]

    float_model(None)
    for name in names:
        d, init = float_model(methods.parse(name).encoder if name in cfg["qat"]["methods"] else None)
        train_phase(run_dir, name, name, cfg, d, dist, init=init if cfg["train"]["qat_init_from_float"] else None,
                    verbose=verbose)
    metrics = run_dir.load_metrics()
    remove_worker_workdir(workdir, role)
    return metrics


def format_summary(metrics: dict, workdir: str, seconds: float) -> str:
    """A markdown table of the phases plus where the results are.

    ``vs float``: relative test-WER change against the float phase of the same encoder; weight memory in kB
    (1000 bytes) from :func:`asr_ext.experiments.methods.weight_report`: bit-packed, and in 8-bit containers.
    """
    phases = {k: m for k, m in metrics.items() if k != "data"}
    floats = {m.get("encoder"): m["test_wer"] for m in phases.values() if m.get("recipe") == "float"}
    lines = ["", "| model | encoder | test WER | vs float | test CER | beam WER | weight bits | weights kB packed | "
             "weights kB int8 | parameters | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for phase, m in phases.items():
        beam = f"{m['beam_wer']:.4f}" if "beam_wer" in m else "-"
        ref = floats.get(m.get("encoder"))
        rel = f"{(m['test_wer'] - ref) / ref:+.1%}" if ref and m.get("recipe") != "float" else "-"
        bits = "/".join(map(str, sorted(set(m.get("weight_bits", {}).values())))) or "-"
        mem = m.get("weight_memory", {})
        lines.append(f"| {phase} | {m.get('encoder', '-')} | {m['test_wer']:.4f} | {rel} | {m['test_cer']:.4f} | "
                     f"{beam} | {bits} | {mem.get('packed_bytes', 0) / 1000:.1f} | "
                     f"{mem.get('int8_container_bytes', 0) / 1000:.1f} | {m.get('parameters', 0):,} | "
                     f"{m.get('train_seconds_last_session', 0):.0f} |")
    lines += ["", f"Results in {workdir}/ (metrics.json, config.json, <phase>/model.keras, <phase>/history.csv, "
              f"<phase>/test_hypotheses.tsv, <phase>/tensorboard). Total wall time {seconds:.0f} s."]
    return "\n".join(lines)
