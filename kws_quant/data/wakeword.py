"""A wake-word corpus from folders of other corpora: one keyword's recordings against everything else.

    read_wakeword_corpus("../shared/data", keyword="alexa", positives="alexa",
                         negatives=("speech_commands", "an4", "fsdd"))

Positives: every audio file of ``<root>/<positives>`` (no speaker ids: each file its own speaker, split by a hash
order fixed by the seed). Negatives: each folder read with the reader of its layout (Speech Commands label folders,
a CMU Sphinx ``etc/`` tree, FSDD file names), split by speaker within its corpus; their clips become ``_unknown_``
(the original label is kept in ``original_label``), Speech Commands' ``_silence_`` clips stay ``_silence_``.
Speaker ids are prefixed with the folder name, so two corpora never share one.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from kws_quant.data.manifest import COLUMNS, SILENCE_LABEL, UNKNOWN_LABEL, validate_manifest
from kws_quant.data.readers import FSDD_NAME, read_audio_folder, read_fsdd, read_speech_commands, read_sphinx


def corpus_layout(folder: str) -> str:
    """``"sphinx"``, ``"fsdd"`` or ``"speech_commands"``: which reader a negative folder needs."""
    if os.path.isdir(os.path.join(folder, "etc")):
        return "sphinx"
    names = os.listdir(folder)
    recordings = os.path.join(folder, "recordings")
    if any(FSDD_NAME.match(n) for n in names) or (
            os.path.isdir(recordings) and any(FSDD_NAME.match(n) for n in os.listdir(recordings))):
        return "fsdd"
    return "speech_commands"


def read_wakeword_corpus(
    root: str,
    keyword: str,
    positives: str,
    negatives: Sequence[str],
    fractions: Sequence[float] = (0.6, 0.15, 0.25),
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Manifest of the wake-word task and the background noise files found (Speech Commands'
    ``_background_noise_``). Labels: ``keyword``, ``_unknown_``, ``_silence_``.

    Raises:
        FileNotFoundError: ``root`` or a named folder does not exist.
        ValueError: a negative corpus has a class named like the keyword (it would be a positive).
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"wake-word data root: directory does not exist: {root}")
    parts = [read_audio_folder(_folder(root, positives, "config.data.wakeword.positives"), keyword, fractions, seed)
             .assign(original_label=keyword, corpus=positives)]
    noise = []
    for name in negatives:
        folder = _folder(root, name, "config.data.wakeword.negatives")
        layout = corpus_layout(folder)
        if layout == "sphinx":
            part = read_sphinx(folder, fractions, seed)
        elif layout == "fsdd":
            part = read_fsdd(folder, fractions, seed)
        else:
            part, found = read_speech_commands(folder, seed=seed, fractions=fractions)
            noise += found
        clash = part["label"].str.lower() == keyword.lower()
        if clash.any():
            raise ValueError(f"{folder}: has clips labelled {keyword!r} ({part['path'][clash].iloc[0]}); a negative "
                             "corpus cannot hold the wake word")
        part = part.assign(original_label=part["label"], corpus=name,
                           speaker=name + ":" + part["speaker"].astype(str),
                           label=part["label"].where(part["label"] == SILENCE_LABEL, UNKNOWN_LABEL))
        parts.append(part)
    manifest = pd.concat([p[list(COLUMNS) + ["original_label", "corpus"]] for p in parts], ignore_index=True)
    return validate_manifest(manifest, None, True, root), sorted(noise)


def _folder(root: str, name: str, field: str) -> str:
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{field}: folder {name!r} does not exist under {root}")
    return path
