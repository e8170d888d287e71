"""Waveform augmentation in numpy, deterministic given a ``numpy.random.Generator``.

All functions take and return float32 ``[samples]`` waveforms. Power is the mean square over the clip and SNR is
``10 log10(P_signal / P_noise)`` in dB.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

SILENT_REFERENCE_POWER = 0.1**2
"""Power of the signal used as the SNR reference for an all-zero clip (an RMS of -20 dBFS, typical speech)."""


def power(x: np.ndarray) -> float:
    """Mean square of ``x`` (float64)."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + g * noise`` with ``g`` chosen so that ``10 log10(P(signal) / P(g * noise)) == snr_db``.

    ``noise`` must have the signal's length and non-zero power. A silent signal uses
    :data:`SILENT_REFERENCE_POWER` as its power.
    """
    if noise.shape != signal.shape:
        raise ValueError(f"noise shape {noise.shape} != signal shape {signal.shape}")
    noise_power = power(noise)
    if noise_power <= 0:
        raise ValueError("noise has zero power")
    signal_power = power(signal) or SILENT_REFERENCE_POWER
    gain = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(np.float32)


def random_segment(noise: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``num_samples`` excerpt of ``noise``, tiled first if it is shorter."""
    if noise.shape[0] < num_samples:
        noise = np.tile(noise, -(-num_samples // noise.shape[0]))
    start = int(rng.integers(0, noise.shape[0] - num_samples + 1))
    return noise[start : start + num_samples]


def random_gain(x: np.ndarray, gain_db: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """``x`` scaled by a gain drawn uniformly in ``gain_db`` (dB, amplitude: ``10^(dB/20)``)."""
    return (x * 10.0 ** (rng.uniform(*gain_db) / 20.0)).astype(np.float32)


def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """``x`` delayed by ``shift`` samples (advanced if negative), zero-filled, same length."""
    if shift == 0:
        return x
    out = np.zeros_like(x)
    if shift > 0:
        out[shift:] = x[:-shift]
    else:
        out[:shift] = x[-shift:]
    return out


def coloured_noise(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectral density ``~ 1/f^exponent`` (0 white, 1 pink, 2 brown), unit RMS.

    Returns float32 ``[num_samples]`` with no DC component.
    """
    spectrum = rng.standard_normal(num_samples // 2 + 1) + 1j * rng.standard_normal(num_samples // 2 + 1)
    spectrum[0] = 0.0
    freqs = np.fft.rfftfreq(num_samples)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum * freqs ** (-exponent / 2.0), n=num_samples)
    return (noise / np.sqrt(power(noise) or 1.0)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` does to each clip.

    Attributes:
        noises: background noise waveforms at the clip's rate (each ``[samples]``; ``make_dataset`` also takes
            file paths here); empty means coloured noise (:func:`coloured_noise`, exponent uniform in [0, 2]).
        noise_prob: probability of mixing in noise.
        snr_db: (low, high) SNR range in dB, drawn uniformly.
        gain_db: (low, high) gain range in dB, drawn uniformly.
        max_shift: largest time shift in samples; the shift is uniform in [-max_shift, max_shift].
        speed: (low, high) speed-perturbation factor range (Kaldi-style: resampling changes tempo and pitch
            together); (1, 1) disables it.
    """

    noises: Sequence[np.ndarray | str] = ()
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (5.0, 25.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    max_shift: int = 1600
    speed: tuple[float, float] = (1.0, 1.0)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (linear interpolation): about ``len(x) / factor`` samples."""
    if factor == 1.0 or x.shape[0] < 2:
        return x
    return np.interp(np.arange(0.0, x.shape[0] - 1, factor), np.arange(x.shape[0]), x).astype(np.float32)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """:func:`change_speed`, then zero-pad or centre-crop to the original length."""
    n = x.shape[0]
    out = change_speed(x, factor)
    if out.shape[0] == n:
        return out
    if out.shape[0] >= n:
        start = (out.shape[0] - n) // 2
        return out[start:start + n]
    pad = n - out.shape[0]
    return np.pad(out, (pad // 2, pad - pad // 2))


def augment(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, time shift, then gain, then (with ``cfg.noise_prob``) noise at a random SNR. float32, same length."""
    x = np.asarray(x, dtype=np.float32)
    if cfg.speed != (1.0, 1.0):
        x = speed_perturb(x, rng.uniform(*cfg.speed))
    x = time_shift(x, int(rng.integers(-cfg.max_shift, cfg.max_shift + 1)))
    x = random_gain(x, cfg.gain_db, rng)
    if rng.random() < cfg.noise_prob:
        if len(cfg.noises):
            noise = random_segment(cfg.noises[int(rng.integers(len(cfg.noises)))], x.shape[0], rng)
        else:
            noise = coloured_noise(x.shape[0], rng.uniform(0.0, 2.0), rng)
        if power(noise) > 0:
            x = mix_at_snr(x, noise, rng.uniform(*cfg.snr_db))
    return x
