"""Reading audio files into float32 mono arrays at a target rate, and checking files before a run.

Stereo (any channel count) is mixed to mono by averaging; other sample rates are resampled with
``librosa.resample`` (its default ``soxr_hq`` band-limited resampler).
Files that cannot be used raise :class:`AudioFileError`, whose message names the file and the reason.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import wave
from collections.abc import Iterable

import librosa
import numpy as np
import soundfile as sf

from kws_quant.features import DEFAULT_SAMPLE_RATE



class AudioFileError(ValueError):
    """An audio file is missing, empty, corrupt or not audio. ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class BadFile:
    """A file skipped by :func:`find_bad_files`, with why."""

    path: str
    reason: str


def check_audio_file(path: str) -> None:
    """Raise :class:`AudioFileError` unless ``path`` is a readable audio file with at least one sample.

    Reads the header of PCM WAV files, which cannot fail to decode once the header is sound (cheap enough for a
    whole dataset); decodes every other file (FLAC, float WAV, SPHERE, ...) whole, since those can be corrupt after a
    sound header (a FLAC stream that loses sync) or hold NaN/inf samples.
    """
    if not os.path.isfile(path):
        raise AudioFileError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise AudioFileError(path, "file is empty (0 bytes)")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioFileError(path, f"not a readable audio file ({err})") from None
    if info.frames <= 0:
        raise AudioFileError(path, "audio file contains no samples")
    if info.samplerate <= 0:
        raise AudioFileError(path, f"invalid sample rate {info.samplerate}")
    if not (info.format == "WAV" and info.subtype.startswith("PCM")):
        _decode(path)


def _decode(path: str) -> tuple[np.ndarray, int]:
    """``(float32 [samples, channels], rate)``; raises :class:`AudioFileError` on a decoding error or a non-finite
    sample."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(path, f"could not decode audio ({err})") from None
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).any(axis=1).sum())
        raise AudioFileError(path, f"{bad} sample(s) are NaN or infinite")
    return audio, rate


def load_audio(path: str, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Read one file as float32 mono ``[samples]`` in [-1, 1] at ``sample_rate`` Hz (mixing and resampling).

    Raises:
        AudioFileError: missing, empty, corrupt or non-audio file.
    """
    check_audio_file(path)
    audio, rate = _decode(path)
    if audio.shape[0] == 0:
        raise AudioFileError(path, "audio file contains no samples")
    return to_mono_rate(audio, rate, sample_rate)


def to_mono_rate(audio: np.ndarray, rate: int, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """``[samples]`` or ``[samples, channels]`` at ``rate`` Hz -> float32 mono ``[samples']`` at ``sample_rate``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(audio, dtype=np.float32)


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """Write float ``[samples]`` in [-1, 1] as a mono 16-bit PCM WAV (rounded, clipped); byte-identical for equal
    input. Uses the standard library writer, which does not fsync (libsndfile's does, ~5 ms per file)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())


def other_sample_rates(paths: Iterable[str], sample_rate: int) -> list[int]:
    """The sample rates (from the headers) of ``paths`` other than ``sample_rate``: audio that will be resampled."""
    return sorted({sf.info(p).samplerate for p in paths if os.path.isfile(p)} - {int(sample_rate)})


def trim_silence(audio: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """``audio`` without its leading and trailing samples quieter than ``top_db`` below its peak (an all-zero clip is
    returned whole): puts a recording's speech where its clip's time axis says it is."""
    energy = np.abs(audio)
    peak = energy.max(initial=0.0)
    if peak == 0:
        return audio
    voiced = np.flatnonzero(energy > peak * 10 ** (-top_db / 20))
    return audio[voiced[0]:voiced[-1] + 1]


def fit_length(audio: np.ndarray, num_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zero-pad or crop ``[samples]`` to ``num_samples``: centred without ``rng``, at a random offset with it."""
    n = audio.shape[0]
    if n == num_samples:
        return audio
    spare = abs(num_samples - n)
    offset = spare // 2 if rng is None else int(rng.integers(0, spare + 1))
    if n > num_samples:
        return audio[offset : offset + num_samples]
    out = np.zeros(num_samples, dtype=audio.dtype)
    out[offset : offset + n] = audio
    return out


def find_bad_files(paths: Iterable[str], skip_bad_files: bool = False) -> list[BadFile]:
    """Check every file's header with :func:`check_audio_file`; returns the bad ones (see :func:`load_audio_files`
    for what ``skip_bad_files`` does)."""
    return _run_skipping(paths, check_audio_file, skip_bad_files)[1]


def load_audio_files(
    paths: Iterable[str], sample_rate: int = DEFAULT_SAMPLE_RATE, skip_bad_files: bool = False
) -> tuple[list[np.ndarray], list[BadFile]]:
    """Load many files with :func:`load_audio`.

    Returns:
        (the arrays of the good files in input order, the bad files). With ``skip_bad_files`` a summary of the bad
        files is printed to stderr.
    Raises:
        AudioFileError: a file is bad and ``skip_bad_files`` is false; the message lists up to 10 bad files with
            reasons and the total count.
    """
    return _run_skipping(paths, lambda p: load_audio(p, sample_rate), skip_bad_files)


def _run_skipping(paths, fn, skip_bad_files):
    results, bad = [], []
    for path in paths:
        try:
            results.append(fn(path))
        except AudioFileError as err:
            bad.append(BadFile(err.path, err.reason))
    if bad:
        summary = summarize_bad_files(bad)
        if not skip_bad_files:
            raise AudioFileError(bad[0].path, f"{bad[0].reason}\n{summary}\n(skip them: --skip_bad_files on the "
                                              "command line, skip_bad_files=True in Python)")
        print(summary, file=sys.stderr)
    return results, bad


def summarize_bad_files(bad: list[BadFile], limit: int = 10) -> str:
    """One line per bad file (at most ``limit``), headed by the total count."""
    lines = [f"{len(bad)} bad audio file(s):"] + [f"  {b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)
