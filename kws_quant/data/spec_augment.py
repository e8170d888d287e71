"""SpecAugment-style masking of log-mel features (Park et al. 2019, without time warping), on batches in TensorFlow.

Each example gets ``time_masks`` bands of ``0..time_width`` consecutive frames and ``freq_masks`` bands of
``0..freq_width`` consecutive mel bins, drawn independently; masked cells take the example's mean log-mel value (a
log-mel of 0 would be a loud, flat spectrum, not an absence of information).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
    """Attributes: number of masks and their largest width, in frames (time) and mel bins (frequency)."""

    time_masks: int = 2
    time_width: int = 10
    freq_masks: int = 2
    freq_width: int = 5

    def __post_init__(self):
        for name in ("time_masks", "time_width", "freq_masks", "freq_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"spec_augment {name}={value!r} must be an integer >= 0")


def _band_mask(seed, batch: int, length, masks: int, width: int) -> tf.Tensor:
    """bool ``[batch, length]``: True inside any of ``masks`` random bands of ``0..width`` cells."""
    positions = tf.range(length)[None, None, :]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    widths = tf.random.stateless_uniform([batch, masks, 1], seeds[0], 0, width + 1, tf.int32)
    starts = tf.cast(tf.random.stateless_uniform([batch, masks, 1], seeds[1]) *
                     tf.cast(length - widths + 1, tf.float32), tf.int32)
    return tf.reduce_any((positions >= starts) & (positions < starts + widths), axis=1)


def spec_augment(features: tf.Tensor, cfg: SpecAugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Masked copy of ``features`` float32 ``[batch, frames, mels]``; ``seed``: int ``[2]`` (stateless)."""
    shape = tf.shape(features)
    batch, frames, mels = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    masked = tf.zeros_like(features, dtype=tf.bool)
    if cfg.time_masks and cfg.time_width:
        masked |= _band_mask(seeds[0], batch, frames, cfg.time_masks, cfg.time_width)[:, :, None]
    if cfg.freq_masks and cfg.freq_width:
        masked |= _band_mask(seeds[1], batch, mels, cfg.freq_masks, cfg.freq_width)[:, None, :]
    mean = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
    return tf.where(masked, mean, features)
