"""Log-mel features: a librosa/numpy reference and an equivalent pure ``tf.signal`` implementation.

Both implementations compute, for audio in [-1, 1] at ``cfg.sample_rate``:

1. frames of ``win_length`` samples every ``hop_length`` samples, no centring or padding, so
   ``frames = 1 + (samples - win_length) // hop_length``;
2. a periodic Hann window of ``win_length`` samples, zero-padded to ``n_fft`` for the FFT;
3. the power spectrum ``|X|^2`` (``n_fft // 2 + 1`` bins);
4. the same mel matrix, ``librosa.filters.mel`` (Slaney scale and area normalisation), built once in numpy;
5. ``log(max(mel_power, log_floor))`` (natural log).

They agree to a maximum absolute difference below ``1e-3`` in the log domain (typically ~2e-5 on speech and
~1e-6 on white noise, float32 TF against the float64 reference) with the default ``log_floor=1e-6``.
"""
from __future__ import annotations

import dataclasses
import functools

import keras
import librosa
import numpy as np
import tensorflow as tf

AGREEMENT_TOLERANCE = 1e-3
DEFAULT_SAMPLE_RATE = 16000
"""Hz: the rate audio is read at, the features computed at, and the synthetic corpora rendered at, by default."""
"""Max abs difference, in the log domain, between :func:`logmel_tf` and :func:`logmel_librosa`."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front end settings.

    Attributes:
        sample_rate: Hz of the input audio.
        n_mels: number of mel bands (feature dimension).
        win_ms: analysis window length, milliseconds.
        hop_ms: frame step, milliseconds.
        n_fft: FFT length in samples (>= window length).
        fmin: lowest mel filter edge, Hz.
        fmax: highest mel filter edge, Hz; ``None`` means ``sample_rate / 2``.
        log_floor: mel power is clamped to at least this before the log.
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    fmin: float = 20.0
    fmax: float | None = None
    log_floor: float = 1e-6

    def __post_init__(self):
        if self.win_length > self.n_fft:
            raise ValueError(f"window of {self.win_length} samples is longer than n_fft={self.n_fft}")
        if self.hop_length < 1:
            raise ValueError(f"hop_ms={self.hop_ms} gives a hop of less than one sample")
        if not 0 <= self.fmin < self.max_freq <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}")

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        """Frame step in samples."""
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def max_freq(self) -> float:
        """``fmax`` with ``None`` resolved to the Nyquist frequency."""
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` of audio: ``1 + (samples - win) // hop`` (0 if shorter than a window)."""
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length


def feature_config_defaults() -> dict:
    """:class:`FeatureConfig`'s defaults as an experiment config section (``config.features``); fields whose default
    is ``None`` are left out (the config then uses the default)."""
    return {k: v for k, v in dataclasses.asdict(FeatureConfig()).items() if v is not None}


@functools.lru_cache(maxsize=16)
def mel_matrix(cfg: FeatureConfig) -> np.ndarray:
    """The mel filterbank, float32 ``[n_mels, n_fft // 2 + 1]`` (``librosa.filters.mel``, Slaney norm); read-only,
    cached per config."""
    weights = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.max_freq
    ).astype(np.float32)
    weights.setflags(write=False)
    return weights


def logmel_librosa(audio: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Reference log-mel of one clip, computed in float64 with librosa/numpy.

    Args:
        audio: ``[samples]`` float waveform at ``cfg.sample_rate``, at least one window long.
    Returns:
        float32 ``[frames, n_mels]``.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1 or audio.shape[0] < cfg.win_length:
        raise ValueError(f"expected 1-D audio of at least {cfg.win_length} samples, got shape {audio.shape}")
    frames = librosa.util.frame(audio, frame_length=cfg.win_length, hop_length=cfg.hop_length, axis=0)
    window = librosa.filters.get_window("hann", cfg.win_length, fftbins=True)
    power = np.abs(np.fft.rfft(frames * window, n=cfg.n_fft, axis=-1)) ** 2
    mel = power @ mel_matrix(cfg).T.astype(np.float64)
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32)


def logmel_tf(
    audio: tf.Tensor, cfg: FeatureConfig = FeatureConfig(), mel_weights: tf.Tensor | None = None
) -> tf.Tensor:
    """Log-mel in pure TF ops (usable in ``tf.data``, ``tf.function`` and Keras layers).

    Args:
        audio: float ``[samples]`` or ``[batch, samples]`` at ``cfg.sample_rate``.
        mel_weights: optional precomputed ``mel_matrix(cfg).T`` as a tensor ``[n_fft//2+1, n_mels]``.
    Returns:
        float32 ``[frames, n_mels]`` or ``[batch, frames, n_mels]``.
    """
    audio = tf.cast(audio, tf.float32)
    if mel_weights is None:
        mel_weights = tf.constant(mel_matrix(cfg).T)
    stft = tf.signal.stft(
        audio,
        frame_length=cfg.win_length,
        frame_step=cfg.hop_length,
        fft_length=cfg.n_fft,
        window_fn=tf.signal.hann_window,  # periodic Hann, as librosa's get_window(fftbins=True)
        pad_end=False,
    )
    power = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
    mel = tf.tensordot(power, mel_weights, axes=1)
    return tf.math.log(tf.maximum(mel, cfg.log_floor))


@keras.saving.register_keras_serializable(package="kws_quant")
class LogMel(keras.layers.Layer):
    """Raw audio ``[batch, samples]`` float32 -> log-mel ``[batch, frames, n_mels]`` (see :func:`logmel_tf`).

    Lets an exported model take raw audio. Has no weights; the mel matrix is a constant rebuilt from the config.
    Its dtype defaults to float32 so a mixed-precision policy does not cast the audio to float16.
    """

    def __init__(self, cfg: FeatureConfig | dict | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(cfg, dict):
            cfg = FeatureConfig(**cfg)
        self.cfg = cfg or FeatureConfig()
        self._mel_weights = tf.constant(mel_matrix(self.cfg).T)

    def call(self, inputs):
        return logmel_tf(inputs, self.cfg, self._mel_weights)

    def compute_output_shape(self, input_shape):
        samples = input_shape[-1]
        frames = None if samples is None else self.cfg.num_frames(samples)
        return (*input_shape[:-1], frames, self.cfg.n_mels)

    def get_config(self):
        return {**super().get_config(), "cfg": dataclasses.asdict(self.cfg)}
