"""Long test streams for streaming KWS evaluation, and model scores over them.

Streams are built from a split's clips (never seen in training): speech clips placed one after another with random
gaps, over a continuous background-noise bed, so keyword occurrences have known times. A stream set is first a
*plan* (:func:`plan_streams`: a JSON manifest of segments, events and noise beds, saved once with
:func:`save_plan`), then audio (:func:`render_streams`), so every model, a LiteRT export included, is scored on
identical audio. Every stream mixes keyword
and non-keyword clips; for keyword ``k``, the audio without ``k`` is the false-alarm denominator
(``eval.det.evaluate_keywords`` with ``fa_in_positive_streams=True``). Optional negative-only streams add audio
with no keyword at all.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from eval.streaming import Stream
from kws_quant.data import coloured_noise, load_audio, power, speed_perturb, trim_silence
from kws_quant.features import FeatureConfig, logmel_tf, mel_matrix
from kws_quant.models import StreamingRunner
from kws_quant.models.stream_state import NotStreamableError, StatefulStreamingRunner


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
        snr_db: background noise level, dB below the power of the speech clips (pauses not counted).
        noise_paths: background noise recordings (e.g. Speech Commands' ``_background_noise_``): each stream's noise
            bed is a random excerpt of one of them (looped when shorter); empty: coloured noise (spectrum
            ``1/f^e``, ``e`` uniform in [0, 2]).
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
    noise_paths: tuple = ()
    hop_frames: int = 2
    smoothing_s: float = 0.1
    refractory_s: float = 1.0
    tolerance_s: float = 0.5
    seed: int = 0

    def plan_settings(self) -> dict:
        """The fields that decide the audio (not how it is scored): a saved plan is reused only when they match."""
        return {"stream_seconds": self.stream_seconds, "negative_hours": self.negative_hours,
                "gap_seconds": list(self.gap_seconds), "snr_db": self.snr_db,
                "noise_paths": [os.path.abspath(p) for p in self.noise_paths], "tolerance_s": self.tolerance_s,
                "seed": self.seed}


@dataclasses.dataclass
class AudioStream:
    """One stream: ``audio [samples]`` at ``sample_rate`` and its keyword occurrences ``(start_s, end_s, label)``."""

    audio: np.ndarray
    sample_rate: int
    events: list


PLAN_FORMAT = 1


def build_streams(manifest, split: str, keyword_labels, sample_rate: int, cfg: StreamConfig = StreamConfig(),
                  skip_bad_files: bool = False) -> list[AudioStream]:
    """:func:`render_streams` of :func:`plan_streams`: the test streams of a split. Deterministic for a seed."""
    load = ClipLoader(sample_rate, skip_bad_files)
    return render_streams(plan_streams(manifest, split, keyword_labels, sample_rate, cfg, load), load)


def plan_streams(manifest, split: str, keyword_labels, sample_rate: int, cfg: StreamConfig = StreamConfig(),
                 load: "ClipLoader | None" = None) -> dict:
    """The segment manifest of a split's test streams (JSON-serialisable; :func:`save_plan`), without audio.

    The split's clips (trimmed to their voiced part) one after another in a random order with random pauses, cut
    into streams of about ``cfg.stream_seconds``; then ``cfg.negative_hours`` of extra keyword-free audio (see
    :class:`StreamConfig`). Each stream records its segments (file, start second, gain, speed, label), its keyword
    events and its noise bed. Deterministic for ``cfg.seed``.
    """
    rows = manifest[manifest["split"] == split]
    if "start_s" in rows:  # excerpts of noise recordings (silence cut from _background_noise_): the beds cover that
        rows = rows[rows["start_s"].isna()]
    if rows.empty:
        raise ValueError(f"no clips in the {split!r} split to build test streams from")
    rng = np.random.default_rng(cfg.seed)
    load = load or ClipLoader(sample_rate, False)
    writer = _PlanWriter(keyword_labels, sample_rate, cfg, rng)
    for i in rng.permutation(len(rows)):
        clip = load(rows["path"].iloc[i])
        if clip is not None:
            writer.add(rows["path"].iloc[i], len(clip), rows["label"].iloc[i])
    writer.flush()
    # Extra audio: the split's non-keyword clips, so it holds no keyword; when every class is a keyword (a digit
    # task) all its clips, keeping their events: for keyword k the other keywords are the audio without k.
    negatives = rows[~rows["label"].isin(keyword_labels)]
    pool = negatives if len(negatives) else rows
    extra = _PlanWriter(keyword_labels, sample_rate, cfg, rng)
    while extra.seconds < cfg.negative_hours * 3600:
        pick = int(rng.integers(len(pool)))
        clip = load(pool["path"].iloc[pick])
        if clip is not None:
            extra.add(pool["path"].iloc[pick], len(clip), pool["label"].iloc[pick],
                      gain=float(10 ** (rng.uniform(-6, 6) / 20)), speed=float(rng.uniform(0.9, 1.1)))
    extra.flush()
    return {"format": PLAN_FORMAT, "split": split, "sample_rate": int(sample_rate),
            "keywords": list(keyword_labels), "settings": cfg.plan_settings(), "streams": writer.streams + extra.streams}


def render_streams(plan: dict, load: "ClipLoader | None" = None, skip_bad_files: bool = False) -> list[AudioStream]:
    """The audio of a plan (:func:`plan_streams`): every model scored on one plan hears identical audio.

    Raises:
        ValueError: a clip's voiced length differs from the plan's (the file changed since the plan was made).
    """
    sr = int(plan["sample_rate"])
    load = load or ClipLoader(sr, skip_bad_files)
    noises = {}
    out = []
    for k, stream in enumerate(plan["streams"]):
        audio = np.zeros(int(stream["samples"]), np.float32)
        for seg in stream["segments"]:
            clip = load(seg["path"])
            if clip is None or len(clip) != seg["samples"]:
                raise ValueError(f"stream plan, stream {k}: {seg['path']} has {0 if clip is None else len(clip)} "
                                 f"voiced samples, the plan says {seg['samples']}: the file changed; make a new plan")
            if seg["speed"] != 1.0:
                clip = speed_perturb(clip, seg["speed"])
            start = int(seg["start"])
            audio[start:start + len(clip)] = clip * np.float32(seg["gain"])
        out.append(AudioStream(_add_noise(audio, stream, noises, sr), sr, [tuple(e) for e in stream["events"]]))
    return out


def save_plan(plan: dict, path: str) -> None:
    """Write a plan as JSON (atomically)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f)
    os.replace(tmp, path)


def load_plan(path: str) -> dict:
    """Read a plan written by :func:`save_plan`; raises ``ValueError`` naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable stream plan ({e})") from None
    problem = _plan_problem(plan)
    if problem:
        raise ValueError(f"{path}: not a stream plan: {problem}")
    return plan


def _plan_problem(plan) -> str:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        return f"format is not {PLAN_FORMAT}"
    if not isinstance(plan.get("sample_rate"), int) or plan["sample_rate"] <= 0:
        return f"sample_rate={plan.get('sample_rate')!r}"
    streams = plan.get("streams")
    if not isinstance(streams, list) or not streams:
        return "no streams"
    for k, st in enumerate(streams):
        try:
            n = int(st["samples"])
            for seg in st["segments"]:
                if not (isinstance(seg["path"], str) and 0 <= int(seg["start"]) and
                        int(seg["start"]) + int(seg["samples"]) <= n and np.isfinite(seg["gain"]) and
                        0.5 <= float(seg["speed"]) <= 2.0):
                    return f"stream {k}: bad segment {seg!r}"
            for ev in st["events"]:
                if len(ev) != 3 or not 0 <= float(ev[0]) <= float(ev[1]) <= n / plan["sample_rate"]:
                    return f"stream {k}: bad event {ev!r}"
            noise = st["noise"]
            if noise["kind"] not in ("file", "coloured") or not np.isfinite(noise["snr_db"]):
                return f"stream {k}: bad noise {noise!r}"
        except (KeyError, TypeError, ValueError) as e:
            return f"stream {k}: {type(e).__name__}: {e}"
    return ""


class ClipLoader:
    """Clips by path, trimmed to their voiced part (:func:`~kws_quant.data.trim_silence`) and loaded once; ``None``
    for a bad file when skipping bad files."""

    def __init__(self, sample_rate, skip_bad_files=False):
        self.sample_rate, self.skip, self.cache = sample_rate, skip_bad_files, {}

    def __call__(self, path):
        if path not in self.cache:
            try:
                self.cache[path] = trim_silence(load_audio(path, self.sample_rate))
            except ValueError:
                if not self.skip:
                    raise
                self.cache[path] = None
        return self.cache[path]


class _PlanWriter:
    """Places clips one after another with random gaps, records keyword events, cuts a stream every
    ``cfg.stream_seconds``."""

    def __init__(self, keyword_labels, sample_rate, cfg, rng):
        self.keywords, self.sr, self.cfg, self.rng = set(keyword_labels), sample_rate, cfg, rng
        self.streams, self.done_seconds = [], 0.0
        self.segments, self.events, self.n = [], [], 0

    @property
    def seconds(self) -> float:
        """Audio planned so far, finished streams and the open one."""
        return self.done_seconds + self.n / self.sr

    def add(self, path: str, samples: int, label: str, gain: float = 1.0, speed: float = 1.0) -> None:
        start = self.n + int(self.rng.uniform(*self.cfg.gap_seconds) * self.sr)
        self.segments.append({"path": str(path), "start": start, "samples": int(samples), "gain": gain,
                              "speed": speed, "label": str(label)})
        self.n = start + samples
        if label in self.keywords:
            self.events.append((start / self.sr, self.n / self.sr, str(label)))
        if self.n >= self.cfg.stream_seconds * self.sr:
            self.flush()

    def flush(self) -> None:
        if not self.segments:
            return
        samples = self.n + int(self.cfg.tolerance_s * self.sr) + self.sr // 2
        if self.cfg.noise_paths:
            pick = int(self.rng.integers(len(self.cfg.noise_paths)))
            noise = {"kind": "file", "path": os.path.abspath(self.cfg.noise_paths[pick]),
                     "offset": float(self.rng.random())}
        else:
            noise = {"kind": "coloured", "exponent": float(self.rng.uniform(0.0, 2.0)),
                     "seed": int(self.rng.integers(2**31))}
        self.streams.append({"samples": samples, "segments": self.segments, "events": self.events,
                             "noise": {**noise, "snr_db": float(self.cfg.snr_db)}})
        self.done_seconds += samples / self.sr
        self.segments, self.events, self.n = [], [], 0


def _add_noise(audio: np.ndarray, stream: dict, cache: dict, sample_rate: int) -> np.ndarray:
    """``audio`` plus its noise bed, scaled to ``snr_db`` below the power of the speech segments."""
    noise_cfg, n = stream["noise"], len(audio)
    if noise_cfg["kind"] == "file":
        path = noise_cfg["path"]
        if path not in cache:
            cache[path] = load_audio(path, sample_rate)
        bed = cache[path]
        if len(bed) < n:
            bed = np.tile(bed, -(-n // len(bed)))
        start = int(noise_cfg["offset"] * (len(bed) - n))
        noise = bed[start:start + n]
    else:
        noise = coloured_noise(n, noise_cfg["exponent"], np.random.default_rng(noise_cfg["seed"]))
    speech = np.concatenate([audio[s["start"]:s["start"] + s["samples"]] for s in stream["segments"]])
    p_speech, p_noise = power(speech), power(noise)
    if p_speech <= 0 or p_noise <= 0:
        return audio
    scale = np.sqrt(p_speech / (p_noise * 10 ** (noise_cfg["snr_db"] / 10)))
    return (audio + scale * noise).astype(np.float32)


def streaming_runner(model, hop_frames: int, batch_size: int = 2048, jit_compile: bool = True,
                     streaming: str = "auto"):
    """How ``model`` runs over a stream: frame-synchronous with state
    (:class:`~kws_quant.models.stream_state.StatefulStreamingRunner`) when it has a streaming form stepping
    ``hop_frames`` frames (the zoo models), else re-run on a sliding window every ``hop_frames`` frames. The runner's
    ``mode`` says which (``"stateful"`` / ``"window"``). ``streaming="window"`` re-runs windows for every model."""
    if streaming not in ("auto", "window"):
        raise ValueError(f"streaming={streaming!r} is not allowed; allowed: 'auto', 'window'")
    try:
        if streaming == "window":
            raise NotStreamableError("the sliding window was asked for")
        runner = StatefulStreamingRunner(model, hop_frames=hop_frames, jit_compile=jit_compile)
        runner.mode = "stateful"
    except (NotStreamableError, ValueError):  # no streaming form, or another hop: the sliding window
        runner = StreamingRunner(model, hop_frames=hop_frames, batch_size=batch_size, jit_compile=jit_compile)
        runner.mode = "window"
    return runner


class StreamScorer:
    """Features + model over whole streams: ``scores`` returns an ``eval.streaming.Stream`` per audio stream.

    The feature sequence is front-padded with ``window - 1`` frames of the stream's own quietest level so that
    window ``i`` ends at frame ``i * hop``: scores are then at ``i * hop_s`` seconds, ``hop_s = hop_frames ·
    feature hop``.
    """

    def __init__(self, model, features: FeatureConfig, label_names, cfg: StreamConfig = StreamConfig(),
                 batch_size: int = 2048, jit_compile: bool = True, runner=None, streaming: str = "auto"):
        """``runner``: scores windows instead of a :class:`~kws_quant.models.StreamingRunner` of ``model`` (e.g. a
        :class:`~kws_quant.export.litert_stream.LiteRTStreamingRunner` of the model's int8 export)."""
        self.features, self.cfg, self.label_names = features, cfg, list(label_names)
        classes = runner.num_classes if runner is not None else model.output_shape[-1]
        if classes != len(self.label_names):
            raise ValueError(f"model {getattr(model, 'name', model)!r} has {classes} outputs but the label set has "
                             f"{len(self.label_names)}: {self.label_names}")
        self.runner = runner or streaming_runner(model, cfg.hop_frames, batch_size, jit_compile, streaming)
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
