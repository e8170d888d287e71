"""ASR data: corpora as manifests, character targets, and the tf.data pipeline for RNN-T training.

Every corpus is a manifest DataFrame with one row per utterance:

    utt_id    unique id
    text      the transcript (checked against the vocabulary when a dataset is made)
    speaker   speaker (or synthetic voice) id; splits never share a speaker unless documented otherwise
    split     train | validation | test
    segments  tuple of (path, ms): a file (ms ignored, whole file) or, with path "", silence of ms milliseconds;
              the utterance's audio is their concatenation
    duration  seconds (from the file headers), for length checks and bucketing
    source    where the row comes from (file, transcript line), for error messages
    label_ids optional: pre-tokenised label ids used instead of ``text`` (checked: no blank, all in [1, V))

Corpora:

- :func:`fsdd_connected_digits`: connected digits from the Free Spoken Digit Dataset (one speaker per utterance,
  2-5 digits with 50-300 ms gaps, deterministic for a seed, speaker-disjoint test).
- :func:`synthetic_corpus`: digit strings and short sentences spoken by eSpeak NG voices (the default when no data is
  given), voice-disjoint splits, rendered once and cached.
- :func:`read_librispeech`: a LibriSpeech-style tree (``<speaker>/<chapter>/<id>.trans.txt`` + FLAC).
- :func:`read_sphinx_corpus`: a CMU Sphinx tree such as AN4 (``etc/*.transcription``, ``wav/**.{sph,flac,wav}``).

:func:`make_asr_dataset` turns a split into padded, length-bucketed batches
``({"features", "feature_lengths", "labels"}, targets)`` for ``model.fit`` with ``RNNTLoss``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import tensorflow as tf

from asr_ext.models.layers import reduced_length
from asr_ext.rnnt_loss import rnnt_targets
from asr_ext.text import CharVocabulary
from kws_quant import data as kd
from kws_quant.features import FeatureConfig, logmel_tf, mel_matrix

MANIFEST_COLUMNS = ("utt_id", "text", "speaker", "split", "segments", "duration", "source")
DIGIT_WORDS = kd.DIGIT_WORDS


# -- manifests ----------------------------------------------------------------------------------------------------
def check_manifest(manifest: pd.DataFrame, what: str = "ASR manifest") -> pd.DataFrame:
    """Raise ``ValueError`` for missing columns, bad splits, duplicate ids; returns the manifest."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(manifest.columns)}")
    bad = ~manifest["split"].isin(kd.SPLITS)
    if bad.any():
        row = manifest[bad].iloc[0]
        raise ValueError(f"{what}: {row['source']}: split={row['split']!r} is not one of {list(kd.SPLITS)}")
    dup = manifest["utt_id"].duplicated()
    if dup.any():
        raise ValueError(f"{what}: utt_id {manifest.loc[dup, 'utt_id'].iloc[0]!r} occurs more than once")
    return manifest


def _duration(path: str) -> float:
    kd.check_audio_file(path)
    info = sf.info(path)
    return info.frames / info.samplerate


def file_rows(rows: Sequence[dict]) -> pd.DataFrame:
    """Manifest of single-file utterances from dicts with ``utt_id, path, text, speaker, split[, source]``."""
    out = []
    for r in rows:
        out.append({"utt_id": r["utt_id"], "text": r["text"], "speaker": str(r["speaker"]), "split": r["split"],
                    "segments": ((r["path"], 0.0),), "duration": r.get("duration") or _duration(r["path"]),
                    "source": r.get("source") or r["path"]})
    return check_manifest(pd.DataFrame(out, columns=list(MANIFEST_COLUMNS)))


# -- FSDD connected digits ------------------------------------------------------------------------------------------
def fsdd_connected_digits(root: str, utterances: Sequence[int] = (3000, 300, 500), min_digits: int = 2,
                          max_digits: int = 5, gap_ms: Sequence[float] = (50.0, 300.0),
                          test_speakers: Sequence[str] = ("jackson",), validation_fraction: float = 0.1,
                          seed: int = 0) -> pd.DataFrame:
    """Connected-digit utterances from FSDD recordings ``{digit}_{speaker}_{index}.wav``.

    Each utterance: one speaker, ``min_digits..max_digits`` recordings of that speaker drawn at random (digits may
    repeat), joined with silences drawn uniformly in ``gap_ms`` (also before the first and after the last digit);
    transcript: the digit words (``"three one four"``). Splits: ``test_speakers`` are the test set; the other
    speakers' recordings are split by recording, ``validation_fraction`` of each speaker's to validation (not
    speaker-disjoint from train: FSDD has too few speakers), the rest train; an utterance uses recordings of its
    split only. Speakers take turns utterance by utterance. Everything derives from ``seed``.

    Args:
        utterances: number of utterances for (train, validation, test).
    """
    if len(utterances) != 3 or min(utterances) < 0:
        raise ValueError(f"utterances={tuple(utterances)!r} must be three non-negative counts (train, val, test)")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits; got {min_digits}, {max_digits}")
    if len(gap_ms) != 2 or not 0 <= gap_ms[0] <= gap_ms[1]:
        raise ValueError(f"gap_ms={tuple(gap_ms)!r} must be (low, high) with 0 <= low <= high")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    clips = kd.read_fsdd(root, test_speakers=tuple(test_speakers), digit_words=True)
    rng = np.random.default_rng([seed, 7])
    clips = clips.copy()
    for _, rows in clips[clips["split"] == "train"].groupby("speaker"):
        take = rng.permutation(rows.index.to_numpy())[:int(round(validation_fraction * len(rows)))]
        clips.loc[take, "split"] = "validation"
    durations = {p: _duration(p) for p in clips["path"]}
    out = []
    for split_index, (split, count) in enumerate(zip(kd.SPLITS, utterances)):
        pool = clips[clips["split"] == split]
        if count and pool.empty:
            raise ValueError(f"FSDD {root}: no recordings for the {split} split (test speakers {list(test_speakers)})")
        by_speaker = {s: rows[["path", "label"]].to_numpy() for s, rows in pool.groupby("speaker")}
        speakers = sorted(by_speaker)
        rng = np.random.default_rng([seed, split_index])
        for i in range(count):
            speaker = speakers[i % len(speakers)]
            recs = by_speaker[speaker]
            picks = recs[rng.integers(0, len(recs), int(rng.integers(min_digits, max_digits + 1)))]
            gaps = rng.uniform(gap_ms[0], gap_ms[1], len(picks) + 1).round(1)
            segments = [("", float(gaps[0]))]
            for (path, _), gap in zip(picks, gaps[1:]):
                segments += [(str(path), 0.0), ("", float(gap))]
            names = ", ".join(os.path.basename(p) for p in picks[:, 0])
            out.append({"utt_id": f"fsdd-{split}-{i:05d}", "text": " ".join(picks[:, 1]), "speaker": speaker,
                        "split": split, "segments": tuple(segments),
                        "duration": float(gaps.sum() / 1000.0 + sum(durations[p] for p in picks[:, 0])),
                        "source": f"FSDD connected-digit utterance {split} #{i} ({names})"})
    return check_manifest(pd.DataFrame(out, columns=list(MANIFEST_COLUMNS)))


# -- synthetic (eSpeak NG) ------------------------------------------------------------------------------------------
SENTENCE_WORDS = tuple("""
a about after all also and any are as at back be because been before big black blue book boy but by call can car
cat city cold come could day did do dog don't door down each early eat every eye face far find first five for four
friend from get girl give go good great green had hand has have he her here him his home house how i i'm if in into
is it it's just keep kind know large last late left let life light like line little long look made make man many
may me men might more morning most mother move much music must my name near never new next night nine no not now
number of off old on one only open or other our out over own page paper part people place play point put question
quick read red right river road room run said same saw say school sea second see seven she should show side six
small so some song sound start still stop story study such sun take talk tell ten than that the their them then
there these they thing think this three through time to today together too tree try two under up us use very walk
want was water way we well went were what when where which while white who why will with word work world would
write year yes you young your zero eight
""".split())
"""Words of the synthetic sentences (all within the character vocabulary)."""

SYNTHETIC_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SyntheticASRConfig:
    """What :func:`synthetic_corpus` renders.

    Attributes:
        utterances: total number of utterances.
        digit_fraction: share of digit strings (the rest are sentences of random words from ``words``).
        digits: (min, max) digits per digit string.
        sentence_words: (min, max) words per sentence.
        words: the sentence vocabulary.
        voices: eSpeak NG voices; each is one speaker, taking turns.
        validation_voices, test_voices: the held-out voices (all others train).
        rate_wpm, pitch, pitch_range: uniform ranges per utterance.
        sample_rate: Hz of the rendered WAVs.
        seed: everything random derives from it.
    """

    utterances: int = 2000
    digit_fraction: float = 0.5
    digits: tuple = (2, 5)
    sentence_words: tuple = (2, 5)
    words: tuple = SENTENCE_WORDS
    voices: tuple = kd.DEFAULT_VOICES
    validation_voices: tuple = ("en-us+paul", "en-gb-scotland+f4")
    test_voices: tuple = ("en-us+steph", "en-gb-x-rp+m2", "en-029+m5")
    rate_wpm: tuple = (130, 200)
    pitch: tuple = (25, 75)
    pitch_range: tuple = (20, 80)
    sample_rate: int = 16000
    seed: int = 0

    def __post_init__(self):
        for name in ("voices", "words", "validation_voices", "test_voices"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"synthetic {name} must be a sequence of strings, not one string")
        object.__setattr__(self, "voices", tuple(self.voices))
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "validation_voices", tuple(self.validation_voices))
        object.__setattr__(self, "test_voices", tuple(self.test_voices))
        unknown = sorted(set(self.validation_voices + self.test_voices) - set(self.voices))
        if unknown:
            raise ValueError(f"synthetic held-out voice(s) {unknown} are not in voices")
        if not set(self.voices) - set(self.validation_voices + self.test_voices):
            raise ValueError("synthetic voices: no voice left for training")
        if self.utterances < 1 or not 0 <= self.digit_fraction <= 1:
            raise ValueError(f"synthetic utterances={self.utterances} must be >= 1 and digit_fraction in [0, 1]")
        vocab = CharVocabulary()
        for w in self.words:
            vocab.check(w, source=f"synthetic word list entry {w!r}")

    def digest(self) -> str:
        fields = {**dataclasses.asdict(self), "format": SYNTHETIC_FORMAT,
                  "espeakng_loader": importlib.metadata.version("espeakng-loader")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def texts(self) -> list[tuple[str, str]]:
        """``(text, voice)`` per utterance."""
        rng = np.random.default_rng([self.seed, 1])
        out = []
        for i in range(self.utterances):
            if rng.random() < self.digit_fraction:
                n = int(rng.integers(self.digits[0], self.digits[1] + 1))
                text = " ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, n))
            else:
                n = int(rng.integers(self.sentence_words[0], self.sentence_words[1] + 1))
                text = " ".join(self.words[j] for j in rng.integers(0, len(self.words), n))
            out.append((text, self.voices[i % len(self.voices)]))
        return out


def default_cache_dir() -> str:
    """``$KWS_QUANT_CACHE/asr_synthetic`` if set, else ``~/.cache/kws_quant/asr_synthetic``."""
    return os.path.join(os.path.dirname(kd.default_cache_dir()), "asr_synthetic")


def synthetic_corpus(cfg: SyntheticASRConfig = SyntheticASRConfig(), cache_dir: str | None = None) -> pd.DataFrame:
    """Render (or reuse from ``<cache_dir>/<cfg.digest()>/``) the synthetic corpus; returns its manifest."""
    folder = os.path.join(cache_dir or default_cache_dir(), cfg.digest())
    csv_path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(csv_path):
        for voice in cfg.voices:
            kd.check_voice(voice)
        tmp = f"{folder}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "wav"))
        try:
            rows = []
            for i, (text, voice) in enumerate(cfg.texts()):
                rng = np.random.default_rng([cfg.seed, 2, i])
                audio = kd.synthesize(text, voice, int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1)),
                                      int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                                      int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)), cfg.sample_rate)
                name = os.path.join("wav", f"{i:06d}.wav")
                kd.write_wav(os.path.join(tmp, name), audio, cfg.sample_rate)
                split = "test" if voice in cfg.test_voices else \
                    "validation" if voice in cfg.validation_voices else "train"
                rows.append({"utt_id": f"synth-{i:06d}", "path": name, "text": text, "speaker": voice,
                             "split": split, "duration": round(len(audio) / cfg.sample_rate, 6)})
            pd.DataFrame(rows).to_csv(os.path.join(tmp, "manifest.csv"), index=False)
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isfile(csv_path):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    table = pd.read_csv(csv_path, dtype={"text": str, "speaker": str}, keep_default_na=False)
    table["path"] = [os.path.join(folder, p) for p in table["path"]]
    return file_rows(table.to_dict("records"))


# -- LibriSpeech -------------------------------------------------------------------------------------------------
_SUBSET_SPLIT = (("train", "train"), ("dev", "validation"), ("test", "test"))


def read_librispeech(root: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                     max_utterances: int | None = None) -> pd.DataFrame:
    """Read a LibriSpeech-style tree: ``**/<id>.trans.txt`` files with lines ``<utt-id> <TRANSCRIPT>`` and the
    audio ``<utt-id>.flac`` (or ``.wav``) next to them. Speaker = the id's part before the first ``-``.

    Splits: a transcript under a folder named ``train-*``, ``dev-*`` or ``test-*`` (the LibriSpeech subsets) goes to
    train, validation or test; otherwise speaker-disjoint splits by ``fractions`` and ``seed``. ``max_utterances``
    keeps the first N per split (sorted by id). Durations come from the file headers.

    Raises:
        FileNotFoundError: ``root`` missing, no transcripts, or an utterance's audio file missing (naming the
            transcript file and line).
        ValueError: a malformed transcript line (file and line number).
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"LibriSpeech root: directory does not exist: {root}")
    rows = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".trans.txt")):
            trans = os.path.join(folder, name)
            subset = os.path.relpath(trans, root).split(os.sep)
            split = next((s for part in subset[:-1] for prefix, s in _SUBSET_SPLIT
                          if part.lower().startswith(prefix + "-")), None)
            with open(trans, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    parts = line.strip().split(maxsplit=1)
                    if len(parts) != 2:
                        raise ValueError(f"{trans}: line {lineno}: expected '<utterance-id> <transcript>', got "
                                         f"{line.strip()!r}")
                    utt, text = parts
                    audio = next((os.path.join(folder, utt + ext) for ext in (".flac", ".wav")
                                  if os.path.isfile(os.path.join(folder, utt + ext))), None)
                    if audio is None:
                        raise FileNotFoundError(f"{trans}: line {lineno}: audio for {utt!r} not found "
                                                f"({utt}.flac or {utt}.wav in {folder})")
                    rows.append({"utt_id": utt, "path": audio, "text": text, "speaker": utt.split("-")[0],
                                 "split": split, "source": f"{trans} line {lineno} ({os.path.basename(audio)})"})
    if not rows:
        raise FileNotFoundError(f"LibriSpeech root {root}: no *.trans.txt transcripts found")
    table = pd.DataFrame(rows)
    if table["split"].isna().any():
        if table["split"].notna().any():
            raise ValueError(f"LibriSpeech root {root}: some transcripts are under train-*/dev-*/test-* folders and "
                             "some are not; point --data_dir at one layout")
        table = kd.assign_speaker_splits(table.drop(columns="split"), fractions, seed)
    if max_utterances:
        table = table.sort_values("utt_id").groupby("split", group_keys=False).head(int(max_utterances))
    return file_rows(table.to_dict("records"))


def read_sphinx_corpus(root: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> pd.DataFrame:
    """A CMU Sphinx corpus (AN4: ``etc/<set>.transcription`` + ``.fileids``, audio under ``wav/``, ``.sph`` included)
    as an ASR manifest, through :func:`kws_quant.data.read_sphinx` (speaker-disjoint splits; ``*test*`` sets stay
    test). Transcripts are lower-cased (the character vocabulary is lower case)."""
    table = kd.read_sphinx(root, fractions, seed)
    rows = [{"utt_id": r.utt_id, "path": r.path, "text": r.label.lower(), "speaker": r.speaker, "split": r.split,
             "source": f"{r.set}.transcription ({r.utt_id})"} for r in table.itertuples()]
    return file_rows(rows)


# -- targets ----------------------------------------------------------------------------------------------------
def encode_targets(manifest: pd.DataFrame, vocab: CharVocabulary) -> list[np.ndarray]:
    """Label ids per row: ``label_ids`` when the manifest has them (checked), else ``vocab.encode(text)``.

    Raises:
        OutOfVocabularyError: a transcript character outside the vocabulary (names the row's source and character).
        ValueError: empty transcripts; pre-tokenised ids equal to blank or outside ``[1, V)`` (names source, position).
    """
    out = []
    has_ids = "label_ids" in manifest.columns
    for row in manifest.itertuples(index=False):
        source = f"{row.source} (utterance {row.utt_id})"
        ids = getattr(row, "label_ids", None) if has_ids else None
        if ids is None or (isinstance(ids, float) and math.isnan(ids)):
            out.append(vocab.encode(row.text, source))
            continue
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{source}: label_ids must be a non-empty 1-D integer sequence; got {ids!r}")
        bad = np.flatnonzero((ids == vocab.blank) | (ids < 0) | (ids >= vocab.size))
        if bad.size:
            pos, value = int(bad[0]), int(ids[bad[0]])
            why = "equals the blank id" if value == vocab.blank else f"is outside [1, {vocab.size})"
            raise ValueError(f"{source}: label_ids[{pos}] = {value} {why}; labels must be in [1, {vocab.size}) "
                             f"(blank = {vocab.blank} is reserved)")
        out.append(ids.astype(np.int32))
    return out


# -- audio --------------------------------------------------------------------------------------------------------
class AudioAssembler:
    """Builds an utterance's waveform from its segments; decoded files are cached in memory (FSDD clips recur)."""

    def __init__(self, sample_rate: int, cache_files: bool = True):
        self.sample_rate = sample_rate
        self.cache_files = cache_files
        self._cache: dict[str, np.ndarray] = {}

    def file(self, path: str) -> np.ndarray:
        audio = self._cache.get(path)
        if audio is None:
            audio = kd.load_audio(path, self.sample_rate)
            if self.cache_files:
                self._cache[path] = audio
        return audio

    def __call__(self, segments) -> np.ndarray:
        parts = [self.file(p) if p else np.zeros(int(round(ms * self.sample_rate / 1000.0)), np.float32)
                 for p, ms in segments]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


@dataclasses.dataclass(frozen=True)
class ASRAugmentConfig:
    """Training augmentation. Waveform: speed perturbation (resampling; changes the length), gain, and with
    ``noise_prob`` coloured noise at an SNR in ``snr_db``. Features: a random warp of the mel axis by a factor in
    ``mel_warp`` (vocal-tract-length perturbation, after Jaitly & Hinton 2013: bin ``f`` reads the spectrum at
    ``f / alpha``, linearly interpolated; (1, 1) disables it), then SpecAugment (Park et al. 2019, without time
    warping): ``freq_masks`` bands of up to ``freq_mask_width`` mel bins and ``time_masks`` spans of up to
    ``time_mask_fraction`` of the frames, set to 0 (the mean after CMVN)."""

    speed: tuple = (0.9, 1.1)
    gain_db: tuple = (-6.0, 6.0)
    noise_prob: float = 0.5
    snr_db: tuple = (10.0, 30.0)
    freq_masks: int = 2
    freq_mask_width: int = 6
    time_masks: int = 2
    time_mask_fraction: float = 0.05
    mel_warp: tuple = (1.0, 1.0)


def augment_waveform(audio: np.ndarray, cfg: ASRAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed (length changes), gain and noise on one waveform; deterministic for ``rng``."""
    audio = kd.change_speed(audio, rng.uniform(*cfg.speed))
    aug = kd.AugmentConfig(noise_prob=cfg.noise_prob, snr_db=tuple(cfg.snr_db), gain_db=tuple(cfg.gain_db),
                           max_shift=0)
    return kd.augment(audio, aug, rng)


def mel_warp(features, alpha):
    """``[T, F]`` features with the mel axis stretched by ``alpha``: bin ``f`` ← linear interpolation at
    ``f / alpha`` (clamped to the last bin)."""
    f = tf.shape(features)[1]
    pos = tf.minimum(tf.range(f, dtype=tf.float32) / alpha, tf.cast(f - 1, tf.float32))
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, f - 1)
    w = pos - tf.cast(lo, tf.float32)
    return tf.gather(features, lo, axis=1) * (1.0 - w) + tf.gather(features, hi, axis=1) * w


def spec_augment(features, cfg: ASRAugmentConfig, seed):
    """Mel warp, frequency and time masks on ``[T, F]`` features (stateless, from ``seed`` [2] int)."""
    if tuple(cfg.mel_warp) != (1.0, 1.0):
        u = tf.random.stateless_uniform([], tf.stack([seed[0], seed[1] + 200]))
        features = mel_warp(features, cfg.mel_warp[0] + u * (cfg.mel_warp[1] - cfg.mel_warp[0]))
    t, f = tf.shape(features)[0], tf.shape(features)[1]
    keep = tf.ones_like(features, dtype=tf.bool)
    for i in range(cfg.freq_masks):
        u = tf.random.stateless_uniform([2], tf.stack([seed[0], seed[1] + i]))
        width = tf.cast(u[0] * (cfg.freq_mask_width + 1), tf.int32)
        start = tf.cast(u[1] * tf.cast(tf.maximum(f - width, 0) + 1, tf.float32), tf.int32)
        band = (tf.range(f) >= start) & (tf.range(f) < start + width)
        keep &= ~band[None, :]
    for i in range(cfg.time_masks):
        u = tf.random.stateless_uniform([2], tf.stack([seed[0], seed[1] + 100 + i]))
        max_w = tf.cast(cfg.time_mask_fraction * tf.cast(t, tf.float32), tf.int32)
        width = tf.cast(u[0] * tf.cast(max_w + 1, tf.float32), tf.int32)
        start = tf.cast(u[1] * tf.cast(tf.maximum(t - width, 0) + 1, tf.float32), tf.int32)
        span = (tf.range(t) >= start) & (tf.range(t) < start + width)
        keep &= ~span[:, None]
    return tf.where(keep, features, tf.zeros_like(features))


# -- the tf.data pipeline --------------------------------------------------------------------------------------------
def _frames(cfg: FeatureConfig, seconds: float) -> int:
    return cfg.num_frames(int(round(seconds * cfg.sample_rate)))


def make_asr_dataset(manifest: pd.DataFrame, split: str, vocab: CharVocabulary, feature_cfg: FeatureConfig,
                     batch_size: int, reduction_factors: Sequence[int] = (1,), augment: ASRAugmentConfig | None = None,
                     shuffle: bool | None = None, seed: int = 0, cmvn: bool = True,
                     dynamic_range_db: float | None = None,
                     bucket_boundaries: Sequence[int] | None = None, num_buckets: int = 5,
                     include_ids: bool = False, assembler: AudioAssembler | None = None) -> tf.data.Dataset:
    """Padded, length-bucketed batches of one split.

    Each element is ``(x, y)`` (``(x, y, ids)`` with ``include_ids``):

        x = {"features": [B, T, n_mels] float32 log-mel (with ``dynamic_range_db``, values more than that many dB
                          below the utterance's maximum are raised to it: recordings with different noise floors
                          and digital silence look alike; then per-utterance mean/variance normalised with ``cmvn``),
             "feature_lengths": [B] int32 frames, "labels": [B, U] int32 label ids padded with 0}
        y = rnnt_targets(labels, logit_lengths, label_lengths): [B, 1+U] int32 (``asr_ext.rnnt_loss.RNNTLoss``)
        ids = [B] int64 row positions within the split (to name the utterances)

    ``logit_lengths`` are the frame counts reduced by ``reduction_factors`` (``RNNTConfig.reduction_factors``: each
    ``ceil(T / k)``). Utterances are grouped into buckets of similar length (``bucket_boundaries`` in frames; default:
    5 quantiles of the split's lengths; ``[]``: no bucketing, batches in input order) so batches carry
    little padding. With ``augment`` (training), waveforms are
    speed/gain/noise-augmented and features SpecAugmented; every random choice derives from ``seed``.

    Raises (before any batch is made):
        ValueError: an empty split; an OOV character or empty transcript (names the utterance's source); label ids
            with blank or out of range; an utterance shorter than one analysis window or giving no encoder frame.
    """
    if split not in kd.SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {', '.join(kd.SPLITS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if dynamic_range_db is not None and not dynamic_range_db >= 0:
        raise ValueError(f"dynamic_range_db={dynamic_range_db!r} must be a non-negative number of dB (or None)")
    check_manifest(manifest)
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the {split} split has no utterances")
    labels = encode_targets(rows, vocab)
    frames = np.array([_frames(feature_cfg, d) for d in rows["duration"]])
    speed_floor = max(augment.speed) if augment is not None else 1.0  # the fastest speed gives the fewest frames
    worst = np.array([_frames(feature_cfg, d / speed_floor) for d in rows["duration"]])
    enc = worst.copy()
    for k in reduction_factors:
        enc = reduced_length(enc, k)
    short = np.flatnonzero((worst < 1) | (enc < 1))
    if short.size:
        r = rows.iloc[int(short[0])]
        raise ValueError(f"{r['source']} (utterance {r['utt_id']}): {r['duration']:.3f} s of audio gives "
                         f"{int(worst[short[0]])} feature frame(s); at least one analysis window "
                         f"({feature_cfg.win_ms} ms) is needed")
    segments = list(rows["segments"])
    assembler = assembler or AudioAssembler(feature_cfg.sample_rate)
    label_table = tf.ragged.constant([lab.tolist() for lab in labels], dtype=tf.int32)
    mel_weights = tf.constant(mel_matrix(feature_cfg).T)
    factors = tuple(int(k) for k in reduction_factors)

    def load(index, element_seed):
        audio = assembler(segments[int(index)])
        if augment is not None:
            audio = augment_waveform(audio, augment, np.random.default_rng(int(element_seed) % 2 ** 64))
        if audio.size < feature_cfg.win_length:  # only reachable through augmentation: pad to one window
            audio = np.pad(audio, (0, feature_cfg.win_length - audio.size))
        return audio.astype(np.float32)

    def example(index, element_seed):
        audio = tf.numpy_function(load, [index, element_seed], tf.float32, stateful=False)
        audio.set_shape([None])
        feats = logmel_tf(audio, feature_cfg, mel_weights)
        if dynamic_range_db:  # clamp everything more than dynamic_range_db below the utterance's loudest bin
            feats = tf.maximum(feats, tf.reduce_max(feats) - dynamic_range_db * math.log(10.0) / 10.0)
        if cmvn:
            mean, var = tf.nn.moments(feats, axes=[0], keepdims=True)
            feats = (feats - mean) * tf.math.rsqrt(var + 1e-5)
        if augment is not None:
            feats = spec_augment(feats, augment, tf.stack([element_seed, index]))
        lab = label_table[index]
        return feats, tf.shape(feats)[0], lab, tf.shape(lab)[0], index

    if shuffle is None:
        shuffle = split == "train"
    ds = tf.data.Dataset.range(len(rows))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds)).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    if bucket_boundaries is None:
        if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
            raise ValueError(f"num_buckets={num_buckets!r} must be a positive integer")
        qs = np.unique(np.quantile(frames, np.arange(1, num_buckets) / num_buckets).astype(int))
        bucket_boundaries = [int(q) + 1 for q in qs if q > 0]
    boundaries = sorted({int(b) for b in bucket_boundaries})
    shapes = ([None, feature_cfg.n_mels], [], [None], [], [])
    pads = (0.0, 0, 0, 0, tf.constant(0, tf.int64))
    if boundaries:
        # Bucketed by the utterance's nominal length, not its augmented one: the batches of an epoch are then known
        # in advance (Keras sees every batch of every epoch and the schedules count real steps); speed
        # perturbation moves a length by at most its factor, little padding.
        nominal = tf.constant(frames, tf.int32)
        ds = ds.bucket_by_sequence_length(lambda f, n, lab, u, i: tf.gather(nominal, i), boundaries,
                                          [int(batch_size)] * (len(boundaries) + 1), padded_shapes=shapes,
                                          padding_values=pads)
        counts = np.bincount(np.searchsorted(boundaries, frames, side="right"), minlength=len(boundaries) + 1)
        ds = ds.apply(tf.data.experimental.assert_cardinality(int(np.ceil(counts / int(batch_size)).sum())))
    else:  # one bucket: batches in input order
        ds = ds.padded_batch(int(batch_size), padded_shapes=shapes, padding_values=pads)

    def to_model(feats, n, lab, u, idx):
        logit_lengths = n
        for k in factors:
            logit_lengths = reduced_length(logit_lengths, k)
        x = {"features": feats, "feature_lengths": n, "labels": lab}
        y = rnnt_targets(lab, logit_lengths, u)
        return (x, y, idx) if include_ids else (x, y)

    return ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def split_summary(manifest: pd.DataFrame) -> dict:
    """Utterances, speakers and hours per split."""
    out = {}
    for split, rows in manifest.groupby("split"):
        out[split] = {"utterances": int(len(rows)), "speakers": sorted(rows["speaker"].unique().tolist()),
                      "hours": round(float(rows["duration"].sum()) / 3600.0, 4)}
    return out


__all__ = ["ASRAugmentConfig", "AudioAssembler", "DIGIT_WORDS", "MANIFEST_COLUMNS", "SENTENCE_WORDS",
           "SyntheticASRConfig", "augment_waveform", "check_manifest", "default_cache_dir", "encode_targets",
           "file_rows", "fsdd_connected_digits", "make_asr_dataset", "read_librispeech", "spec_augment",
           "split_summary", "synthetic_corpus"]
