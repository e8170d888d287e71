"""Long test streams for streaming KWS evaluation, and model scores over them.

Streams are built from a split's clips (never seen in training): speech clips placed one after another with random
gaps, over a continuous background-noise bed, so keyword occurrences have known times. Every stream mixes keyword
and non-keyword clips; for keyword ``k``, the audio without ``k`` is the false-alarm denominator
(``eval.det.evaluate_keywords`` with ``fa_in_positive_streams=True``). Optional negative-only streams add audio
with no keyword at all.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from eval.streaming import Stream
from kws_quant.data import coloured_noise, load_audio, mix_at_snr, speed_perturb
from kws_quant.features import FeatureConfig, logmel_tf, mel_matrix
from kws_quant.models import StreamingRunner


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """How test streams are built and scored.

    Attributes:
        stream_seconds: target length of each stream, seconds.
        negative_hours: extra audio with no keyword, hours: held-out non-keyword clips drawn with replacement,
            each with a random gain (±6 dB) and speed (0.9–1.1), so false accepts per hour have a resolution of
            about ``1 / (negative_hours + positive hours)``. A split with no non-keyword clips (every class a
            keyword) draws from all its clips instead, keeping their keyword events.
        gap_seconds: (low, high) silence between clips, seconds.
        snr_db: background noise level relative to the speech, dB.
        hop_frames: feature frames between model evaluations (2 = every 20 ms at a 10 ms hop).
        smoothing_s: causal moving average of posteriors, seconds.
        refractory_s: no second detection within this time, seconds.
        tolerance_s: a detection up to this long after a keyword clip ends still counts, seconds (the model fires
            when its window has seen the whole keyword).
        seed: everything random derives from it.
    """

    stream_seconds: float = 60.0
    negative_hours: float = 1.0
    gap_seconds: tuple = (0.2, 1.5)
    snr_db: float = 20.0
    hop_frames: int = 2
    smoothing_s: float = 0.1
    refractory_s: float = 1.0
    tolerance_s: float = 0.5
    seed: int = 0


@dataclasses.dataclass
class AudioStream:
    """One stream: ``audio [samples]`` at ``sample_rate`` and its keyword occurrences ``(start_s, end_s, label)``."""

    audio: np.ndarray
    sample_rate: int
    events: list


def build_streams(manifest, split: str, keyword_labels, sample_rate: int, cfg: StreamConfig = StreamConfig(),
                  skip_bad_files: bool = False) -> list[AudioStream]:
    """Concatenate the ``split``'s clips into streams of about ``cfg.stream_seconds``, then add
    ``cfg.negative_hours`` of extra audio (see :class:`StreamConfig`). Deterministic for a seed."""
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"no clips in the {split!r} split to build test streams from")
    rng = np.random.default_rng(cfg.seed)
    load = _ClipLoader(sample_rate, skip_bad_files)
    writer = _StreamWriter(keyword_labels, sample_rate, cfg, rng)
    for i in rng.permutation(len(rows)):
        clip = load(rows["path"].iloc[i])
        if clip is not None:
            writer.add(clip, rows["label"].iloc[i])
    writer.flush()
    # Extra audio: the split's non-keyword clips, so it holds no keyword; when every class is a keyword (a digit
    # task) all its clips, keeping their events: for keyword k the other keywords are the audio without k.
    negatives = rows[~rows["label"].isin(keyword_labels)]
    pool = negatives if len(negatives) else rows
    extra = _StreamWriter(keyword_labels, sample_rate, cfg, rng)
    while extra.seconds < cfg.negative_hours * 3600:
        pick = int(rng.integers(len(pool)))
        clip = load(pool["path"].iloc[pick])
        if clip is not None:
            gain = np.float32(10 ** (rng.uniform(-6, 6) / 20))
            extra.add(speed_perturb(clip, rng.uniform(0.9, 1.1)) * gain, pool["label"].iloc[pick])
    extra.flush()
    return writer.streams + extra.streams


class _ClipLoader:
    """Trimmed clips by path, loaded once; ``None`` for a bad file when skipping bad files."""

    def __init__(self, sample_rate, skip_bad_files):
        self.sample_rate, self.skip, self.cache = sample_rate, skip_bad_files, {}

    def __call__(self, path):
        if path not in self.cache:
            try:
                self.cache[path] = _trim(load_audio(path, self.sample_rate))
            except ValueError:
                if not self.skip:
                    raise
                self.cache[path] = None
        return self.cache[path]


class _StreamWriter:
    """Places clips one after another with random gaps, records keyword events, cuts a stream every
    ``cfg.stream_seconds``."""

    def __init__(self, keyword_labels, sample_rate, cfg, rng):
        self.keywords, self.sr, self.cfg, self.rng = set(keyword_labels), sample_rate, cfg, rng
        self.streams, self.done_seconds = [], 0.0
        self.pieces, self.events, self.t = [], [], 0.0

    @property
    def seconds(self) -> float:
        """Audio written so far, finished streams and the open one."""
        return self.done_seconds + self.t

    def add(self, clip: np.ndarray, label: str) -> None:
        gap = np.zeros(int(self.rng.uniform(*self.cfg.gap_seconds) * self.sr), np.float32)
        self.pieces += [gap, clip]
        start = self.t + len(gap) / self.sr
        self.t = start + len(clip) / self.sr
        if label in self.keywords:
            self.events.append((start, self.t, label))
        if self.t >= self.cfg.stream_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pieces:
            self.streams.append(_finish(self.pieces, self.events, self.sr, self.cfg, self.rng))
            self.done_seconds += self.t
            self.pieces, self.events, self.t = [], [], 0.0


def _trim(clip: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """Drop leading/trailing near-silence so event times are the speech's (noise-only clips are kept whole)."""
    energy = np.abs(clip)
    peak = energy.max(initial=0.0)
    if peak == 0:
        return clip
    voiced = np.flatnonzero(energy > peak * 10 ** (-top_db / 20))
    return clip[voiced[0]:voiced[-1] + 1]


def _finish(pieces, events, sample_rate, cfg, rng) -> AudioStream:
    tail = np.zeros(int(cfg.tolerance_s * sample_rate) + sample_rate // 2, np.float32)
    audio = np.concatenate(pieces + [tail])
    if np.any(audio):
        audio = mix_at_snr(audio, coloured_noise(len(audio), rng.uniform(0.0, 2.0), rng), cfg.snr_db)
    return AudioStream(audio.astype(np.float32), sample_rate, list(events))


class StreamScorer:
    """Features + model over whole streams: ``scores`` returns an ``eval.streaming.Stream`` per audio stream.

    The feature sequence is front-padded with ``window - 1`` frames of the stream's own quietest level so that
    window ``i`` ends at frame ``i * hop``: scores are then at ``i * hop_s`` seconds, ``hop_s = hop_frames ·
    feature hop``.
    """

    def __init__(self, model, features: FeatureConfig, label_names, cfg: StreamConfig = StreamConfig(),
                 batch_size: int = 2048, jit_compile: bool = True):
        self.features, self.cfg, self.label_names = features, cfg, list(label_names)
        if model.output_shape[-1] != len(self.label_names):
            raise ValueError(f"model {model.name!r} has {model.output_shape[-1]} outputs but the label set has "
                             f"{len(self.label_names)}: {self.label_names}")
        self.runner = StreamingRunner(model, hop_frames=cfg.hop_frames, batch_size=batch_size,
                                      jit_compile=jit_compile)
        self.hop_s = cfg.hop_frames * features.hop_length / features.sample_rate
        self._mel = tf.constant(mel_matrix(features).T)

    def logmel(self, audio: np.ndarray) -> np.ndarray:
        """``[frames, n_mels]`` log-mel of a whole stream (the same ``tf.signal`` front end as training)."""
        return logmel_tf(tf.constant(audio, tf.float32), self.features, self._mel).numpy()

    def scores(self, stream: AudioStream, stream_id=None) -> Stream:
        feats = self.logmel(stream.audio)
        pad = np.full((self.runner.window - 1, feats.shape[1]), feats.min(), np.float32)
        posteriors = self.runner.posteriors(np.concatenate([pad, feats]))
        return Stream(np.clip(posteriors, 0.0, 1.0), events=tuple(stream.events), stream_id=stream_id)
