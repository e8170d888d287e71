"""Text-to-speech with eSpeak NG through ctypes, using the library and data shipped by ``espeakng-loader``.

Synthesis runs in-process, synchronously, into memory (``AUDIO_OUTPUT_SYNCHRONOUS`` with a synth callback).

Determinism: eSpeak NG keeps some state across utterances that no API resets (the pitch-flutter phase, the
roughness cycle counter, the clipping gain control, and the intonation flags a variant may set), so the same call
could give different samples depending on what was spoken before. This module therefore runs eSpeak on a private
temporary copy of the English data in which every voice and variant ends with ``flutter 0``, ``roughness 8`` (off)
and ``intonation 0``, reseeds eSpeak's random generators before each utterance, and speaks at a volume low enough
not to clip (peaks stay below ~0.75 over all shipped variants and parameter ranges). With that, equal arguments give
byte-identical audio whatever was synthesized before (checked over all shipped variants as history). Voices lose
pitch flutter and creak; the synthetic corpus varies pitch and rate instead.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import tempfile
import threading

import espeakng_loader
import numpy as np

from kws_quant.data.audio import DEFAULT_SAMPLE_RATE, to_mono_rate

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_VOLUME_LEVEL = 20  # eSpeak's default 100 can clip, which starts a gain control whose state persists
_DETERMINISM_PATCH = b"\nflutter 0\nroughness 8\nintonation 0\n"
_DATA_FILES = ("phondata", "phonindex", "phontab", "intonations", "en_dict")
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The process-wide eSpeak NG instance (the C library has global state); use through :func:`synthesize`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data_dir = _private_data_dir()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_dir.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data at {self.data_dir}")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK_TYPE(self._collect)  # kept referenced for the library's lifetime
        lib.espeak_SetSynthCallback(self.callback)
        self.lib = lib
        try:
            self.srand = ctypes.CDLL(None).srand
        except (OSError, AttributeError):  # no C runtime symbol lookup (Windows): nothing else to seed
            self.srand = lambda seed: None

    def _collect(self, wav, num_samples, events):
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        check_voice(voice)
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"eSpeak NG could not load voice {voice!r}")
            for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, _VOLUME_LEVEL)):
                self.lib.espeak_SetParameter(parameter, int(value), 0)
            self.lib.espeak_ng_SetRandSeed(0)
            self.srand(0)
            self.chunks = []
            data = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def _private_data_dir() -> str:
    """Copy the English eSpeak NG data to a temporary folder, patched for determinism (see module docstring)."""
    source = espeakng_loader.get_data_path()
    target = tempfile.mkdtemp(prefix="kws_quant_espeak_")
    atexit.register(shutil.rmtree, target, True)
    for name in _DATA_FILES:
        shutil.copy(os.path.join(source, name), target)
    for sub in ("lang", os.path.join("voices", "!v")):
        shutil.copytree(os.path.join(source, sub), os.path.join(target, sub))
        for folder, _, files in os.walk(os.path.join(target, sub)):
            for name in files:
                with open(os.path.join(folder, name), "ab") as f:
                    f.write(_DETERMINISM_PATCH)
    return target


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


@functools.lru_cache(maxsize=1)
def list_voices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(English accents, voice variants) available in the shipped data, e.g. ``(("en", "en-us", ...), ("f3", ...))``.

    A voice name is ``ACCENT`` or ``ACCENT+VARIANT`` (e.g. ``"en-us+f3"``).
    """
    data = espeakng_loader.get_data_path()
    accents = tuple(sorted(n.lower() for n in os.listdir(os.path.join(data, "lang", "gmw"))
                           if n.lower().startswith("en") and n != "en-Shaw"))  # en-Shaw: Shavian alphabet
    variants = tuple(sorted(os.listdir(os.path.join(data, "voices", "!v"))))
    return accents, variants


def check_voice(voice: str) -> None:
    """Raise ``ValueError`` unless ``voice`` is ``ACCENT`` or ``ACCENT+VARIANT`` from :func:`list_voices` (checked
    here because eSpeak silently ignores an unknown variant)."""
    accents, variants = list_voices()
    accent, _, variant = voice.partition("+")
    if accent.lower() not in accents or (variant and variant not in variants):
        raise ValueError(f"eSpeak NG voice {voice!r} not found; use ACCENT or ACCENT+VARIANT with "
                         f"ACCENT in {list(accents)} and VARIANT in {list(variants)}")


def synthesize(
    text: str,
    voice: str = "en-us",
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    trim: bool = True,
) -> np.ndarray:
    """Speak ``text`` with eSpeak NG; deterministic for equal arguments.

    Args:
        text: UTF-8 text (plain, not SSML).
        voice: ``ACCENT`` or ``ACCENT+VARIANT``, see :func:`list_voices`.
        rate: speaking rate, words per minute, 80..450.
        pitch: base pitch, 0..99 (50 is the voice's normal).
        pitch_range: intonation range, 0..99 (0 is monotone).
        sample_rate: output rate in Hz (eSpeak renders at 22050 Hz; resampled by
            :func:`kws_quant.data.audio.to_mono_rate`).
        trim: drop leading/trailing samples below 1% of the peak amplitude.
    Returns:
        float32 ``[samples]`` in [-1, 1].
    """
    if not text.strip():
        raise ValueError("text to synthesize is empty")
    limits = (("rate", rate, 80, 450), ("pitch", pitch, 0, 99), ("pitch_range", pitch_range, 0, 99))
    for name, value, low, high in limits:
        if not low <= value <= high:
            raise ValueError(f"{name}={value} outside [{low}, {high}]")
    engine = _get_engine()
    audio = engine.speak(text, voice, rate, pitch, pitch_range).astype(np.float32) / 32768.0
    if trim and audio.size:
        loud = np.flatnonzero(np.abs(audio) >= 0.01 * np.abs(audio).max())
        audio = audio[loud[0] : loud[-1] + 1]
    return to_mono_rate(audio, engine.sample_rate, sample_rate)
