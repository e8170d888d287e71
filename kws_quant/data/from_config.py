"""A KWS experiment's data from its config: ``config.data`` → the manifest of labelled clips and noise files.

Shared by the training runner (:mod:`kws_quant.experiments.kws`) and the evaluation of a finished run
(:mod:`eval.report`), which must read the same clips with the same labels and splits.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kws_quant import data as kd

SOURCES = ("synthetic", "fsdd", "speech_commands", "wakeword", "csv")


def load_manifest(cfg: dict):
    """``(manifest, label_names, keyword_labels, noise_paths)`` for ``cfg["data"]``; clear errors on bad input."""
    d = cfg["data"]
    source, keywords = d["source"], [kd.keyword_label(k) for k in d["keywords"]]
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    noises = []
    if source == "synthetic":
        scfg = kd.SyntheticConfig(keywords=tuple(d["keywords"]), clip_seconds=d["clip_seconds"],
                                  sample_rate=cfg["features"]["sample_rate"],
                                  split_fractions=tuple(d["split_fractions"]), **d["synthetic"])
        manifest = kd.synthetic_corpus(scfg, cache_dir=d["cache_dir"] or None)
    else:
        if not d["data_dir"]:
            raise ValueError(f"config.data.source={source!r} needs a dataset: pass --data_dir")
        split = dict(validation_speakers=d["validation_speakers"] or None, test_speakers=d["test_speakers"] or None)
        if source == "fsdd":
            manifest = kd.read_fsdd(d["data_dir"], fractions=d["split_fractions"], seed=cfg["seed"], **split)
        elif source == "wakeword":
            if len(keywords) != 1:
                raise ValueError(f"config.data.keywords={tuple(d['keywords'])}: the wakeword source takes one keyword")
            w = d["wakeword"]
            manifest, noises = kd.read_wakeword_corpus(d["data_dir"], keywords[0], w["positives"], w["negatives"],
                                                       fractions=d["split_fractions"], seed=cfg["seed"])
        elif source == "speech_commands":
            manifest, noises = kd.read_speech_commands(d["data_dir"], seed=cfg["seed"],
                                                          fractions=d["split_fractions"])
        else:
            manifest = kd.read_csv_manifest(d["data_dir"], fractions=d["split_fractions"], seed=cfg["seed"])
    present = set(manifest["label"])
    missing = [k for k in keywords if k not in present]
    if missing:
        raise ValueError(f"keyword label(s) {missing} from config.data.keywords have no clips in the "
                         f"{source} data ({d['data_dir'] or 'synthetic corpus'}); labels found: "
                         f"{', '.join(sorted(present)[:20])}")
    manifest = kd.relabel_unknown(hold_out_validation(manifest, d["validation_fraction"], cfg["seed"]),
                                  keep=keywords + [kd.SILENCE_LABEL])
    manifest = oversample(manifest, keywords, d["keyword_oversample"])
    extra = [name for name in (kd.SILENCE_LABEL, kd.UNKNOWN_LABEL) if name in set(manifest["label"])]
    return manifest, extra + keywords, keywords, noises


def oversample(manifest, labels, factor: int):
    """Repeat the train rows of ``labels`` ``factor`` times (each repeat is augmented afresh): a wake word with a few
    hundred takes against thousands of other clips. Validation and test rows are never repeated."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"config.data.keyword_oversample={factor!r} must be an integer >= 1")
    if factor == 1:
        return manifest
    rows = manifest[(manifest["split"] == "train") & manifest["label"].isin(labels)]
    return pd.concat([manifest] + [rows] * (factor - 1), ignore_index=True)


def hold_out_validation(manifest, fraction: float, seed: int):
    """Move ``fraction`` of each label's train clips to validation when the split has no validation speakers.

    For corpora with too few speakers to spare one for validation (FSDD has four). Validation is then not
    speaker-disjoint from train; test stays speaker-disjoint.
    """
    if not fraction:
        return manifest
    if not 0 < fraction < 1:
        raise ValueError(f"config.data.validation_fraction={fraction} must be in [0, 1)")
    if (manifest["split"] == "validation").any():
        raise ValueError("config.data.validation_fraction needs a split without validation speakers; "
                         "set config.data.validation_speakers=() or validation_fraction=0")
    manifest = manifest.copy()
    rng = np.random.default_rng(seed)
    for _, rows in manifest[manifest["split"] == "train"].groupby("label"):
        take = rng.permutation(rows.index.to_numpy())[:int(round(fraction * len(rows)))]
        manifest.loc[take, "split"] = "validation"
    return manifest
