"""Built-in synthetic keyword-spotting corpus rendered with eSpeak NG, cached on disk as 16-bit WAVs.

Classes (labels):

- one per keyword, named by :func:`keyword_label` (``"hey computer"`` -> ``"hey_computer"``);
- :data:`UNKNOWN_LABEL` (``"_unknown_"``): a non-keyword word or short phrase (``SyntheticConfig.non_keywords``);
- :data:`SILENCE_LABEL` (``"_silence_"``): background noise only.

Each speech clip is one utterance by one voice (``accent+variant``) at a random rate, pitch and intonation range,
trimmed, scaled to a random RMS level, placed at a random offset in a clip of ``clip_seconds`` and mixed with
coloured noise (spectrum ``1/f^e``, ``e`` uniform in [0, 2]) at a random SNR. Noise-only clips have a random RMS
level. ``speaker`` is the voice, so splits are voice-disjoint; a noise-only clip is attributed to a voice (round
robin) only to place it in that voice's split.

Everything derives from ``seed``: each clip uses its own generator seeded by ``(seed, clip index)``, and eSpeak
synthesis is deterministic (see :mod:`kws_quant.data.espeak`), so the same config gives byte-identical WAVs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil

import numpy as np
import pandas as pd

from kws_quant.data.disk_cache import default_cache_root
from kws_quant.data.audio import fit_length, write_wav
from kws_quant.data.augmentation import coloured_noise, mix_at_snr, power
from kws_quant.data.espeak import check_voice, synthesize
from kws_quant.data.manifest import SILENCE_LABEL, UNKNOWN_LABEL, assign_speaker_splits
from kws_quant.data.readers import read_csv_manifest
from kws_quant.data.vocabulary import NON_KEYWORDS
from kws_quant.features import DEFAULT_SAMPLE_RATE

CORPUS_FORMAT = 1
"""Bumped whenever rendering changes, so older caches are not reused."""

DEFAULT_VOICES = (
    "en+m1", "en+f1", "en+klatt", "en+david", "en+belinda",
    "en-us+m3", "en-us+f2", "en-us+Andy", "en-us+steph", "en-us+max", "en-us+paul",
    "en-gb-x-rp+m2", "en-gb-x-rp+f3", "en-gb-x-rp+john",
    "en-gb-scotland+m4", "en-gb-scotland+f4",
    "en-029+m5", "en-029+f5",
    "en-us-nyc+m6", "en-us-nyc+linda",
    "en-gb-x-gbclan+m7", "en-gb-x-gbclan+Annie",
    "en-gb-x-gbcwmd+klatt2", "en-gb-x-gbcwmd+aunty",
)
"""24 voices over the 8 English accents shipped with eSpeak NG."""

_MAX_RATE = 450
_RATE_STEP = 1.2  # an utterance longer than the clip is re-spoken this much faster (up to 5 times), then cropped


def keyword_label(keyword: str) -> str:
    """Class name of a keyword phrase: lower case, words joined by ``_`` (``"Hey computer"`` -> ``"hey_computer"``)."""
    return "_".join(keyword.lower().split())


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to render. Ranges are (low, high), drawn uniformly per clip.

    Attributes:
        keywords: keyword phrases, one class each.
        non_keywords: texts for the ``_unknown_`` class (entries equal to a keyword are dropped).
        clips_per_keyword: clips rendered for each keyword.
        unknown_clips: clips of ``_unknown_`` speech.
        silence_clips: noise-only clips.
        voices: eSpeak voices ``accent+variant``; each is one speaker.
        rate_wpm: speaking rate range, words per minute (80..450).
        pitch: base pitch range (0..99, 50 is the voice's normal).
        pitch_range: intonation range (0..99).
        speech_dbfs: speech RMS level range, dB relative to full scale.
        snr_db: speech-to-noise ratio range, dB.
        silence_dbfs: RMS level range of noise-only clips, dBFS.
        clip_seconds: clip length, seconds.
        sample_rate: Hz of the WAVs.
        split_fractions: (train, validation, test) shares for the voice-disjoint split.
        validation_voices, test_voices: explicit held-out voices; when either is non-empty they replace
            ``split_fractions`` (all other voices train).
        seed: everything random derives from it.
    """

    keywords: tuple[str, ...] = ("hey computer",)
    non_keywords: tuple[str, ...] = NON_KEYWORDS
    clips_per_keyword: int = 1000
    unknown_clips: int = 1500
    silence_clips: int = 400
    voices: tuple[str, ...] = DEFAULT_VOICES
    rate_wpm: tuple[int, int] = (120, 220)
    pitch: tuple[int, int] = (20, 80)
    pitch_range: tuple[int, int] = (20, 80)
    speech_dbfs: tuple[float, float] = (-30.0, -15.0)
    snr_db: tuple[float, float] = (5.0, 30.0)
    silence_dbfs: tuple[float, float] = (-65.0, -30.0)
    clip_seconds: float = 1.0
    sample_rate: int = DEFAULT_SAMPLE_RATE
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    validation_voices: tuple[str, ...] = ()
    test_voices: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        for name in ("keywords", "non_keywords", "voices"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a sequence of strings, not one string")
        if not self.keywords or any(not k.strip() for k in self.keywords):
            raise ValueError(f"keywords must be non-empty phrases, got {self.keywords}")
        if not self.voices:
            raise ValueError("voices is empty")
        if self.unknown_clips and not self.unknown_texts:
            raise ValueError("no non-keyword texts left after removing the keywords")
        labels = [keyword_label(k) for k in self.keywords]
        if len(set(labels)) != len(labels):
            raise ValueError(f"keywords {self.keywords} give duplicate labels {labels}")

    @property
    def label_names(self) -> list[str]:
        """``[_silence_, _unknown_, keyword labels...]``: a label order for training."""
        return [SILENCE_LABEL, UNKNOWN_LABEL] + [keyword_label(k) for k in self.keywords]

    @property
    def unknown_texts(self) -> tuple[str, ...]:
        """``non_keywords`` without the keywords themselves."""
        keys = {keyword_label(k) for k in self.keywords}
        return tuple(t for t in self.non_keywords if keyword_label(t) not in keys)

    def digest(self) -> str:
        """Hash of the config, the corpus format and the eSpeak package version: the cache folder name."""
        fields = {**dataclasses.asdict(self), "format": CORPUS_FORMAT,
                  "espeakng_loader": importlib.metadata.version("espeakng-loader")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$KWS_QUANT_CACHE/synthetic`` if set, else ``~/.cache/kws_quant/synthetic``."""
    return os.path.join(default_cache_root(), "synthetic")


def synthetic_corpus(cfg: SyntheticConfig = SyntheticConfig(), cache_dir: str | None = None) -> pd.DataFrame:
    """Render (or reuse) the corpus and return its manifest.

    Files live in ``<cache_dir>/<cfg.digest()>/`` (default :func:`default_cache_dir`) with a ``manifest.csv``
    written last; an existing complete folder is reused without rendering.

    Returns:
        manifest with ``path, label, speaker, split`` plus ``text, rate_wpm, pitch, pitch_range, snr_db``
        (``text`` empty and ``snr_db`` NaN for noise-only clips).
    """
    folder = os.path.join(cache_dir or default_cache_dir(), cfg.digest())
    csv_path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(csv_path):
        _render(cfg, folder)
    return read_csv_manifest(csv_path, label_names=cfg.label_names)


def _render(cfg: SyntheticConfig, folder: str) -> None:
    for voice in cfg.voices:
        check_voice(voice)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "clips"))
    try:
        _render_into(cfg, tmp)
        os.replace(tmp, folder)
    except OSError:
        if not os.path.isfile(os.path.join(folder, "manifest.csv")):
            raise
    finally:  # gone after a successful rename; removes a partial render or the loser of a race
        shutil.rmtree(tmp, ignore_errors=True)


def _render_into(cfg: SyntheticConfig, tmp: str) -> None:
    rows = []
    for index, (label, text, voice) in enumerate(_plan(cfg)):
        audio, info = _render_clip(cfg, text, voice, np.random.default_rng([cfg.seed, index]))
        name = os.path.join("clips", f"{index:06d}_{label}.wav")
        write_wav(os.path.join(tmp, name), audio, cfg.sample_rate)
        rows.append({"path": name, "label": label, "speaker": voice, "text": text, **info})
    explicit = bool(cfg.validation_voices or cfg.test_voices)
    manifest = assign_speaker_splits(
        pd.DataFrame(rows), cfg.split_fractions, cfg.seed,
        cfg.validation_voices if explicit else None, cfg.test_voices if explicit else None,
    )
    manifest.to_csv(os.path.join(tmp, "manifest.csv"), index=False)


def _plan(cfg: SyntheticConfig) -> list[tuple[str, str, str]]:
    """(label, text, voice) per clip; voices round robin within each class, unknown texts drawn with ``seed``."""
    rng = np.random.default_rng([cfg.seed, 2**31])
    voices = cfg.voices
    plan = []
    for keyword in cfg.keywords:
        plan += [(keyword_label(keyword), keyword, voices[i % len(voices)]) for i in range(cfg.clips_per_keyword)]
    texts = cfg.unknown_texts
    plan += [(UNKNOWN_LABEL, texts[int(rng.integers(len(texts)))], voices[i % len(voices)])
             for i in range(cfg.unknown_clips)]
    plan += [(SILENCE_LABEL, "", voices[i % len(voices)]) for i in range(cfg.silence_clips)]
    return plan


def _render_clip(cfg: SyntheticConfig, text: str, voice: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One clip, float32 ``[clip_seconds * sample_rate]``, and its metadata."""
    num_samples = int(round(cfg.clip_seconds * cfg.sample_rate))
    noise = coloured_noise(num_samples, rng.uniform(0.0, 2.0), rng)
    if not text:
        level = 10.0 ** (rng.uniform(*cfg.silence_dbfs) / 20.0)
        return (level * noise).astype(np.float32), {"rate_wpm": 0, "pitch": 0, "pitch_range": 0, "snr_db": np.nan}
    rate = int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1))
    pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1))
    pitch_range = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
    speech = synthesize(text, voice, rate, pitch, pitch_range, cfg.sample_rate)
    for _ in range(5):
        if speech.shape[0] <= num_samples or rate >= _MAX_RATE:
            break
        rate = min(_MAX_RATE, int(rate * _RATE_STEP))
        speech = synthesize(text, voice, rate, pitch, pitch_range, cfg.sample_rate)
    if not np.any(speech):
        raise RuntimeError(f"eSpeak produced no audio for {text!r} with voice {voice!r}")
    speech = fit_length(speech, num_samples, rng)
    speech *= 10.0 ** (rng.uniform(*cfg.speech_dbfs) / 20.0) / np.sqrt(power(speech))
    snr = float(rng.uniform(*cfg.snr_db))
    clip = mix_at_snr(speech, noise, snr)
    peak = np.abs(clip).max()
    if peak > 0.99:
        clip *= 0.99 / peak
    info = {"rate_wpm": rate, "pitch": pitch, "pitch_range": pitch_range, "snr_db": round(snr, 3)}
    return clip.astype(np.float32), info
