"""``tf.data`` input pipeline: manifest -> batches of (log-mel features, label index).

Audio is decoded in numpy (:func:`~kws_quant.data.audio.load_audio`: mono mix, librosa resampling) through
``tf.numpy_function`` and brought to the clip length with :func:`~kws_quant.data.audio.fit_length` (centred, or at a
random offset when augmenting). Features come from :func:`kws_quant.features.logmel_tf`.

Without augmentation the features are cached; with augmentation the decoded audio is cached and cropping,
:func:`~kws_quant.data.augmentation.augment` and the features run after the cache, with a generator per element seeded
from ``seed`` (``tf.data.Dataset.random`` re-randomized each epoch), so a run is reproducible for a seed. The cache
is in memory, or on disk in shards for a corpus too large for memory (:mod:`kws_quant.data.disk_cache`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from kws_quant.data.audio import (BadFile, find_bad_files, fit_length, load_audio, load_audio_files,
                                  summarize_bad_files, trim_silence)
from kws_quant.data.augmentation import AugmentConfig
from kws_quant.data.augmentation import augment as augment_clip
from kws_quant.data.disk_cache import (SHUFFLE_BUFFER_BYTES, default_cache_root, disk_cached, fingerprint, open_entry,
                                       resolve_mode)
from kws_quant.data.manifest import SILENCE_LABEL, SPLITS
from kws_quant.data.spec_augment import SpecAugmentConfig, spec_augment
from kws_quant.features import FeatureConfig, logmel_tf, mel_matrix


def label_indices(manifest: pd.DataFrame, label_names: Sequence[str]) -> np.ndarray:
    """int32 index of each row's label in ``label_names``.

    Raises:
        ValueError: naming the first file whose label is not in ``label_names``.
    """
    lookup = {name: i for i, name in enumerate(label_names)}
    unknown = ~manifest["label"].isin(lookup)
    if unknown.any():
        row = manifest[unknown].iloc[0]
        raise ValueError(f"{row['path']}: label={row['label']!r} is not in label_names {list(label_names)} "
                         f"({int(unknown.sum())} such file(s))")
    return manifest["label"].map(lookup).to_numpy(np.int32)


def make_dataset(
    manifest: pd.DataFrame,
    split: str,
    label_names: Sequence[str],
    feature_cfg: FeatureConfig = FeatureConfig(),
    clip_seconds: float = 1.0,
    batch_size: int = 64,
    shuffle: bool | None = None,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    cache: bool | str = "memory",
    skip_bad_files: bool = False,
    drop_remainder: bool = False,
    shuffle_buffer: int = 10_000,
    spec_augment_cfg: SpecAugmentConfig | None = None,
    trim_db: float = 0.0,
    cache_dir: str | None = None,
) -> tf.data.Dataset:
    """Batches of ``(features float32 [B, frames, n_mels], label index int32 [B])`` for one split.

    Args:
        manifest: columns ``path, label, split`` (see :mod:`kws_quant.data.manifest`); an optional ``start_s``
            column takes a clip from that second of its file (NaN: the whole file).
        split: which rows to use, one of ``train, validation, test``.
        label_names: label order; index ``i`` is ``label_names[i]``.
        feature_cfg: front end; its ``sample_rate`` is the rate audio is resampled to.
        clip_seconds: every clip is padded/cropped to this length.
        shuffle: default: only for ``"train"``. Shuffles after the cache, reshuffled each epoch.
        augment: augmentation settings, or ``None``. ``noises`` may hold waveforms or file paths (loaded here at
            ``feature_cfg.sample_rate``).
        cache: where the decoded features (or, when augmenting, the decoded audio) are kept between epochs:
            ``"memory"`` (or ``True``), ``"disk"`` (shards under ``cache_dir``, default
            ``<KWS_QUANT_CACHE or ~/.cache/kws_quant>/features``, reused by later runs while files and settings are
            unchanged: :mod:`kws_quant.data.disk_cache`), ``"auto"`` (disk beyond 1 GiB) or ``"none"`` (``False``).
        skip_bad_files: skip unreadable/empty/missing files (a summary is printed) instead of raising.
        shuffle_buffer: upper bound of the shuffle buffer (elements).
        spec_augment_cfg: SpecAugment masks on the features of each batch (:mod:`kws_quant.data.spec_augment`), seeded
            from ``seed`` like the audio augmentation; ``None`` for none.
        trim_db: > 0: cut each speech clip's leading and trailing audio quieter than this many dB below its peak
            (:func:`~kws_quant.data.audio.trim_silence`) before fitting it to the clip length, so the crop lands on
            the speech of recordings longer than a clip (wake-word takes, sentences); ``_silence_`` clips stay whole.
    Raises:
        ValueError: unknown split, no rows for the split, or a label not in ``label_names`` (naming the file).
        AudioFileError: a bad audio file when ``skip_bad_files`` is false.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"no rows with split={split!r}; splits present: {sorted(manifest['split'].unique())}")
    labels = label_indices(rows, label_names)
    paths = rows["path"].astype(str).to_numpy()
    # an excerpt of a longer file (silence cut from a noise recording): its start second; -1: the whole file
    starts = (rows["start_s"].astype(float).fillna(-1.0) if "start_s" in rows else pd.Series(-1.0, rows.index))
    starts = starts.to_numpy(np.float32)
    sample_rate = feature_cfg.sample_rate
    num_samples = int(round(clip_seconds * sample_rate))
    frames = feature_cfg.num_frames(num_samples)
    if frames < 1:
        raise ValueError(f"clip_seconds={clip_seconds} is shorter than one analysis window")
    silence = list(label_names).index(SILENCE_LABEL) if SILENCE_LABEL in label_names else -1
    trimmed = (labels != silence) if trim_db > 0 else np.zeros(len(paths), bool)  # what decoding depends on
    content = "features" if augment is None else "audio"
    element_bytes = 4 * (frames * feature_cfg.n_mels if augment is None else num_samples)
    mode = resolve_mode(cache, len(paths), element_bytes)
    disk_key = entry = None
    if mode == "disk":  # a cache of these files and settings records its bad files: the headers need no new check
        settings = {"content": content, "features": dataclasses.asdict(feature_cfg), "num_samples": num_samples,
                    "trim_db": float(trim_db)}
        disk_key = fingerprint(paths, zip(starts.tolist(), trimmed.tolist()), settings)
        cache_root = cache_dir or os.path.join(default_cache_root(), "features")
        bad, entry = _recorded_bad_files(cache_root, disk_key, skip_bad_files)
    if disk_key is None or bad is None:
        bad = find_bad_files(list(dict.fromkeys(paths)), skip_bad_files)  # repeated rows: once
    bad_paths = {b.path for b in bad}
    if bad_paths:
        keep = np.array([p not in bad_paths for p in paths])
        paths, labels, starts, trimmed = paths[keep], labels[keep], starts[keep], trimmed[keep]
        if not len(paths):
            raise ValueError(f"split={split!r}: every file is bad")
    mel_weights = tf.constant(mel_matrix(feature_cfg).T)
    autotune = tf.data.AUTOTUNE

    def features(audio):  # on batches: batched STFTs are ~2.5x faster than per-clip ones
        out = logmel_tf(audio, feature_cfg, mel_weights)
        out.set_shape([None, frames, feature_cfg.n_mels])
        return out

    def decode(index, path, start, trim, fixed_length):
        def load(p, start_s, trim_this):
            audio = load_audio(p.decode(), sample_rate)
            if start_s >= 0:
                first = int(round(float(start_s) * sample_rate))
                audio = audio[first:first + num_samples]
            if trim_this:
                audio = trim_silence(audio, trim_db)
            return fit_length(audio, num_samples) if fixed_length else audio
        audio = tf.numpy_function(load, [path, start, trim], tf.float32, stateful=False)
        audio.set_shape([num_samples] if fixed_length else [None])
        return index, audio

    def decoded() -> tf.data.Dataset:
        """``(index int64, features [frames, n_mels] or audio [samples])`` in index order: what the cache holds."""
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths, starts, trimmed))
        if augment is not None:
            return ds.map(lambda i, p, s, t: decode(i, p, s, t, False), num_parallel_calls=autotune)
        # unbatch loses the cardinality; Keras would then learn an epoch's length by running out of data (and warn)
        return ds.map(lambda i, p, s, t: decode(i, p, s, t, True), num_parallel_calls=autotune).batch(64).map(
            lambda i, a: (i, features(a))).unbatch().apply(tf.data.experimental.assert_cardinality(len(paths)))

    if shuffle is None:
        shuffle = split == "train"
    buffer = min(len(paths), shuffle_buffer)
    if mode == "disk":
        ds, _ = disk_cached(decoded, disk_key, cache_root, len(paths), shuffle, seed, describe=f"{split} {content}",
                            entry=entry,
                            extra_info={"bad_files": [dataclasses.asdict(b) for b in bad]})
        buffer = min(buffer, max(1, SHUFFLE_BUFFER_BYTES // element_bytes))
        options = tf.data.Options()  # workers split the elements, not the shard files (uneven, or too few)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    else:
        ds = decoded().cache() if mode == "memory" else decoded()
    label_table = tf.constant(labels)
    ds = ds.map(lambda i, x: (x, tf.gather(label_table, i)))
    if shuffle:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        augment_fn = _clip_augmenter(_with_loaded_noises(augment, sample_rate, skip_bad_files), num_samples)

        def augmented(example, element_seed):
            audio = tf.numpy_function(augment_fn, [example[0], element_seed], tf.float32, stateful=False)
            audio.set_shape([num_samples])
            return audio, example[1]

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(augmented, num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        ds = ds.map(lambda audio, label: (features(audio), label), num_parallel_calls=autotune)
    if spec_augment_cfg is not None:
        batch_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(
            lambda batch, s: (spec_augment(batch[0], spec_augment_cfg, s), batch[1]), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def _recorded_bad_files(cache_root: str, key: str, skip_bad_files: bool):
    """``(bad files, entry)``: the complete disk cache of ``key`` (``None``: none) and the bad files it recorded when
    it was built (its files are unchanged: they are in the key); the bad files are ``None`` when there is no such
    cache or it recorded bad files without ``skip_bad_files`` (the check then runs again and raises, naming them)."""
    entry, _ = open_entry(os.path.join(cache_root, key), key)
    if entry is None:
        return None, None
    bad = [BadFile(**b) for b in entry.info.get("bad_files", [])]
    if bad and not skip_bad_files:
        return None, entry
    if bad:
        print(summarize_bad_files(bad), file=sys.stderr)
    return bad, entry


def _with_loaded_noises(cfg: AugmentConfig, sample_rate: int, skip_bad_files: bool) -> AugmentConfig:
    """``cfg`` with noise file paths replaced by their waveforms (empty ones dropped)."""
    is_path = [isinstance(n, (str, os.PathLike)) for n in cfg.noises]
    arrays = [np.asarray(n, np.float32) for n, p in zip(cfg.noises, is_path) if not p]
    loaded, _ = load_audio_files([str(n) for n, p in zip(cfg.noises, is_path) if p], sample_rate, skip_bad_files)
    return dataclasses.replace(cfg, noises=tuple(n for n in arrays + loaded if n.size))


def _clip_augmenter(cfg: AugmentConfig, num_samples: int):
    def run(audio: np.ndarray, element_seed: np.int64) -> np.ndarray:
        rng = np.random.default_rng(int(element_seed) % 2**64)
        return augment_clip(fit_length(audio, num_samples, rng), cfg, rng)
    return run
