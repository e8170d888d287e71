"""The tf.data pipeline for RNN-T training: character targets, utterance audio assembled from segments,
waveform and feature augmentation, and :func:`make_asr_dataset` (padded, length-bucketed batches). Re-exported by
:mod:`asr_ext.data`."""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from asr_ext.models.layers import reduced_length
from asr_ext.rnnt_loss import rnnt_targets
from asr_ext.corpora import check_manifest
from asr_ext.text import CharVocabulary
from kws_quant import data as kd
from kws_quant.features import FeatureConfig, logmel_tf, mel_matrix

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
