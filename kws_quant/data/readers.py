"""Dataset readers; each returns a manifest (see :mod:`kws_quant.data.manifest`) checked by ``validate_manifest``.

- :func:`read_speech_commands`: Google Speech Commands layout.
- :func:`read_fsdd`: Free Spoken Digit Dataset naming ``{digit}_{speaker}_{index}.wav``.
- :func:`read_csv_manifest`: any dataset described by a CSV ``path,label[,speaker][,split]``.
- :func:`read_sphinx`: CMU Sphinx layout (AN4): ``etc/<set>.transcription`` + ``etc/<set>.fileids``, audio under
  ``wav/``.
- :func:`read_audio_folder`: every audio file of a folder as one label (e.g. wake-word recordings).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from kws_quant.data.manifest import COLUMNS, SILENCE_LABEL, assign_speaker_splits, validate_manifest

BACKGROUND_NOISE_DIR = "_background_noise_"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$", re.IGNORECASE)
"""FSDD file names: ``{digit}_{speaker}_{index}.wav``."""


def _require_dir(root: str, what: str) -> str:
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what}: directory does not exist: {root}")
    return root


def require_evaluation_folder(data_dir: str, source: str) -> str:
    """``data_dir`` as an absolute path, for scoring a finished run on another folder of its layout (``source``:
    the run's ``config.data.source``). Raises ``FileNotFoundError`` if it does not exist and ``ValueError`` for a run
    trained on the built-in synthetic corpus, which has no folder layout."""
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"--data_dir: {data_dir} does not exist")
    if source == "synthetic":
        raise ValueError("this run trained on the built-in synthetic corpus: --data_dir needs a run of a real layout "
                         "(its config.data.source names the folder layout it reads)")
    return os.path.abspath(data_dir)


def speech_commands_speaker(file_name: str) -> str:
    """Speaker id of a Speech Commands file name: the hash before ``_nohash_``.

    ``3cfc6b3a_nohash_1.wav`` -> ``3cfc6b3a``; the canonical test archive's ``_unknown_`` folder prefixes the original
    word (``backward_0c540988_nohash_0.wav.wav`` -> ``0c540988``). A name without ``_nohash_`` (``_silence_/12.wav``)
    is its own speaker: its stem.
    """
    if "_nohash_" in file_name:
        return file_name.split("_nohash_")[0].rsplit("_", 1)[-1]
    return file_name.split(".", 1)[0]


def read_speech_commands(
    root: str, label_names: Iterable[str] | None = None, seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1), silence_fraction: float = 0.1,
) -> tuple[pd.DataFrame, list[str]]:
    """Read a Google Speech Commands tree: the full dataset or the canonical 12-class test archive.

    Layout: ``root/<label>/<speaker>_nohash_<n>.wav`` (the test archive's ``_unknown_/<word>_<speaker>_nohash_<n>.wav``
    and its ``_silence_/<n>.wav`` folder too); ``validation_list.txt`` and ``testing_list.txt`` (paths relative to
    ``root``) pick the validation and test files, all others are train. If neither list exists, a speaker-disjoint
    split is assigned with :func:`assign_speaker_splits` (``fractions`` of the files, speakers ordered by a hash of
    ``(seed, speaker)``: deterministic). Speaker: :func:`speech_commands_speaker`; a ``_silence_`` clip is a speaker of
    its own, named ``_silence_/<stem>``.

    Args:
        label_names: if given, a label folder not in it raises ``ValueError``.
        fractions: (train, validation, test) shares of the files when there are no list files.
        silence_fraction: a tree without a ``_silence_`` folder (the full dataset) gets this many ``_silence_`` clips
            per clip of each split, cut from ``_background_noise_`` (:func:`silence_from_noise`, rows with a
            ``start_s`` column).
    Returns:
        (manifest, background noise paths from ``root/_background_noise_/``, sorted).
    """
    root = _require_dir(root, "Speech Commands root")
    rows = []
    for label in sorted(os.listdir(root)):
        folder = os.path.join(root, label)
        if label == BACKGROUND_NOISE_DIR or label.startswith(".") or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(".wav"):
                speaker = speech_commands_speaker(name)
                rows.append((os.path.join(folder, name), label,
                             speaker if "_nohash_" in name else f"{label}/{speaker}"))
    if not rows:
        raise ValueError(f"Speech Commands root {root}: no <label>/*.wav files found")
    manifest = pd.DataFrame(rows, columns=["path", "label", "speaker"])
    lists = {split: os.path.join(root, name) for split, name in
             (("validation", "validation_list.txt"), ("test", "testing_list.txt"))}
    if any(os.path.isfile(p) for p in lists.values()):
        manifest["split"] = "train"
        for split, list_path in lists.items():
            if os.path.isfile(list_path):
                listed = _read_split_list(list_path, root)
                unknown = sorted(listed - set(manifest["path"]))
                if unknown:
                    raise FileNotFoundError(f"{list_path}: listed file does not exist: {unknown[0]}")
                manifest.loc[manifest["path"].isin(listed), "split"] = split
        # The official lists are speaker-disjoint by construction; a custom tree may not be: only the other checks.
        disjoint = False
    else:
        manifest, disjoint = assign_speaker_splits(manifest, fractions, seed), True
    noise_dir = os.path.join(root, BACKGROUND_NOISE_DIR)
    noise = sorted(os.path.join(noise_dir, n) for n in os.listdir(noise_dir) if n.lower().endswith(".wav")) \
        if os.path.isdir(noise_dir) else []
    if SILENCE_LABEL not in set(manifest["label"]) and noise and silence_fraction > 0:
        manifest = pd.concat([manifest, silence_from_noise(manifest, noise, silence_fraction, seed)],
                             ignore_index=True)
    return _validate(manifest, label_names, source=root, speaker_disjoint=disjoint), noise


def silence_from_noise(manifest: pd.DataFrame, noise_paths, fraction: float, seed: int = 0,
                       clip_seconds: float = 1.0) -> pd.DataFrame:
    """``_silence_`` rows cut from background-noise recordings, as the full Speech Commands dataset's recipe does (it
    has no silence folder): per split, ``fraction`` × that split's clips, each a ``clip_seconds`` excerpt
    (``start_s``) of a noise file at a random offset; deterministic for ``seed``. Each row is its own speaker."""
    rng = np.random.default_rng(seed)
    lengths = [sf.info(p).duration for p in noise_paths]
    rows = []
    for split, count in manifest["split"].value_counts().sort_index().items():
        for k in range(int(round(fraction * count))):
            pick = int(rng.integers(len(noise_paths)))
            start = float(rng.uniform(0.0, max(lengths[pick] - clip_seconds, 0.0)))
            rows.append({"path": noise_paths[pick], "label": SILENCE_LABEL, "speaker": f"{SILENCE_LABEL}/{split}{k}",
                         "split": split, "start_s": round(start, 3)})
    return pd.DataFrame(rows, columns=["path", "label", "speaker", "split", "start_s"])


def _read_split_list(list_path: str, root: str) -> set[str]:
    with open(list_path, encoding="utf-8") as f:
        return {os.path.normpath(os.path.join(root, line.strip())) for line in f if line.strip()}


def read_fsdd(
    root: str,
    fractions: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    validation_speakers: Iterable[str] | None = None,
    test_speakers: Iterable[str] | None = None,
    digit_words: bool = True,
) -> pd.DataFrame:
    """Read Free Spoken Digit Dataset recordings ``root/{digit}_{speaker}_{index}.wav`` (or ``root/recordings/…``,
    the dataset repository's layout).

    Labels are the digit words ``"zero"..."nine"`` (the Speech Commands class names), or the digit characters
    ``"0"..."9"`` with ``digit_words=False``. Splits are speaker-disjoint: explicit ``validation_speakers`` /
    ``test_speakers`` (others train), else :func:`assign_speaker_splits` with ``fractions`` and ``seed``.
    Files not matching the naming pattern are ignored.
    """
    root = _require_dir(root, "FSDD root")
    if not any(FSDD_NAME.match(n) for n in os.listdir(root)) and os.path.isdir(os.path.join(root, "recordings")):
        root = os.path.join(root, "recordings")  # the FSDD repository's layout
    rows = []
    for name in sorted(os.listdir(root)):
        match = FSDD_NAME.match(name)
        if match:
            digit, speaker, _ = match.groups()
            rows.append((os.path.join(root, name), DIGIT_WORDS[int(digit)] if digit_words else digit, speaker))
    if not rows:
        raise ValueError(f"FSDD root {root}: no files named {{digit}}_{{speaker}}_{{index}}.wav")
    manifest = assign_speaker_splits(
        pd.DataFrame(rows, columns=["path", "label", "speaker"]), fractions, seed, validation_speakers, test_speakers
    )
    return _validate(manifest, None, source=root)


def read_csv_manifest(
    csv_path: str,
    label_names: Iterable[str] | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read a CSV with columns ``path,label[,speaker][,split]`` (extra columns are kept).

    Relative paths are resolved against the CSV's folder. Without ``speaker`` each file is its own speaker; without
    ``split`` a speaker-disjoint split is assigned with :func:`assign_speaker_splits` (``fractions``, ``seed``).

    Raises:
        FileNotFoundError: the CSV or a listed file does not exist.
        ValueError: a required column is missing or empty, a split value is invalid, a label is not in
            ``label_names``, or a speaker is in two splits.
    """
    csv_path = os.path.abspath(os.path.expanduser(str(csv_path)))
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"CSV manifest does not exist: {csv_path}")
    try:
        manifest = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv_path}: not a readable CSV ({err})") from None
    manifest.columns = [c.strip() for c in manifest.columns]
    for column in ("path", "label"):
        if column not in manifest.columns:
            raise ValueError(f"{csv_path}: missing required column {column!r}; has {list(manifest.columns)}")
        empty = manifest[column].str.strip() == ""
        if empty.any():
            raise ValueError(f"{csv_path}: row {int(empty.idxmax()) + 2}: empty {column!r}")
    folder = os.path.dirname(csv_path)
    manifest["path"] = [os.path.normpath(os.path.join(folder, p.strip())) for p in manifest["path"]]
    manifest["label"] = manifest["label"].str.strip()
    if "speaker" not in manifest.columns:
        manifest["speaker"] = manifest["path"]
    if "split" not in manifest.columns:
        manifest = assign_speaker_splits(manifest, fractions, seed)
    manifest["split"] = manifest["split"].str.strip()
    for column in manifest.columns.difference(COLUMNS):  # extra columns: numbers where they all parse
        try:
            manifest[column] = pd.to_numeric(manifest[column].replace("", np.nan))
        except (ValueError, TypeError):
            pass
    return _validate(manifest, label_names, source=csv_path, check_files=check_files)


AUDIO_EXTENSIONS = (".wav", ".flac", ".sph")
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^()\s]+)\)\s*$")


def read_sphinx(
    root: str,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    validation_speakers: Iterable[str] | None = None,
    test_speakers: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a CMU Sphinx corpus (AN4's layout): one row per utterance.

    Every ``etc/<set>.transcription`` (lines ``<s> WORDS </s> (utt-id)``) with its ``etc/<set>.fileids`` (lines
    ``<dir>/<speaker>/<utt-id>``, audio at ``wav/<line>.{sph,wav,flac}``, NIST SPHERE ``.sph`` included) is read;
    the two files are paired line by line and must name the same utterance. Speaker = the folder above the file.
    Splits are speaker-disjoint: explicit speaker lists, else :func:`assign_speaker_splits` (``fractions``, ``seed``).
    Sets named ``*test*`` keep their files in ``test``; with a test set present, ``fractions`` split the rest
    between train and validation (its test share goes to train).

    Returns:
        columns ``path, label, speaker, split`` (``label`` = the transcript, upper case as written) plus ``utt_id``
        and ``set``.
    Raises:
        FileNotFoundError: no ``etc/*.transcription``, a missing ``.fileids`` or audio file (named).
        ValueError: a malformed line or a transcription/fileids mismatch (file and line number).
    """
    root = _require_dir(root, "Sphinx corpus root")
    etc = os.path.join(root, "etc")
    sets = sorted(n[: -len(".transcription")] for n in os.listdir(etc) if n.endswith(".transcription")) \
        if os.path.isdir(etc) else []
    if not sets:
        raise FileNotFoundError(f"Sphinx corpus root {root}: no etc/<set>.transcription file")
    rows = []
    for name in sets:
        trans_path, ids_path = (os.path.join(etc, name + ext) for ext in (".transcription", ".fileids"))
        if not os.path.isfile(ids_path):
            raise FileNotFoundError(f"{trans_path}: its file list {ids_path} does not exist")
        with open(trans_path, encoding="utf-8", errors="replace") as f:
            lines = [(i, ln) for i, ln in enumerate(f, 1) if ln.strip()]
        with open(ids_path, encoding="utf-8", errors="replace") as f:
            ids = [ln.strip() for ln in f if ln.strip()]
        if len(ids) != len(lines):
            raise ValueError(f"{trans_path}: {len(lines)} transcriptions but {ids_path} lists {len(ids)} files")
        for (lineno, line), file_id in zip(lines, ids):
            match = _SPHINX_LINE.match(line)
            if not match or not match.group(1):
                raise ValueError(f"{trans_path}:{lineno}: not '<s> WORDS </s> (utt-id)': {line.strip()[:80]!r}")
            text, utt = match.groups()
            if os.path.basename(file_id) != utt:
                raise ValueError(f"{trans_path}:{lineno}: utterance {utt!r} but {ids_path} line {lineno} names "
                                 f"{file_id!r}")
            stem = os.path.join(root, "wav", *file_id.split("/"))
            path = next((stem + ext for ext in AUDIO_EXTENSIONS if os.path.isfile(stem + ext)), None)
            if path is None:
                raise FileNotFoundError(f"{ids_path}:{lineno}: no audio file {stem}.{{sph,wav,flac}}")
            speaker = os.path.basename(os.path.dirname(file_id)) or utt
            rows.append((path, " ".join(text.split()), speaker, utt, name))
    manifest = pd.DataFrame(rows, columns=["path", "label", "speaker", "utt_id", "set"])
    is_test = manifest["set"].str.contains("test")
    if is_test.any() and validation_speakers is None and test_speakers is None:
        train_share = fractions[0] + fractions[2]
        rest = assign_speaker_splits(manifest[~is_test], (fractions[0] / train_share, fractions[1] / train_share,
                                                          0.0), seed)
        manifest = pd.concat([rest, manifest[is_test].assign(split="test")]).loc[manifest.index]
    else:
        manifest = assign_speaker_splits(manifest, fractions, seed, validation_speakers, test_speakers)
    return _validate(manifest, None, source=root)


def read_audio_folder(root: str, label: str, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                      seed: int = 0) -> pd.DataFrame:
    """Every audio file (``.wav``, ``.flac``, ``.sph``) directly in ``root`` as one ``label``, each file its own
    speaker (for recordings without speaker ids, e.g. crowd-sourced wake words), split by ``fractions`` in a hash
    order fixed by ``seed``."""
    root = _require_dir(root, f"{label} folder")
    names = sorted(n for n in os.listdir(root) if n.lower().endswith(AUDIO_EXTENSIONS))
    if not names:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    manifest = pd.DataFrame({"path": [os.path.join(root, n) for n in names], "label": label,
                             "speaker": [f"{label}/{n}" for n in names]})
    return _validate(assign_speaker_splits(manifest, fractions, seed), None, source=root)


def _validate(manifest, label_names, source, check_files=True, speaker_disjoint=True) -> pd.DataFrame:
    extra = [c for c in manifest.columns if c not in COLUMNS]
    manifest = manifest[list(COLUMNS) + extra].reset_index(drop=True)
    return validate_manifest(manifest, label_names, check_files, source, speaker_disjoint)
