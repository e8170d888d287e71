"""ASR corpora as manifests (one row per utterance; the columns are described in :mod:`asr_ext.data`):
:func:`fsdd_connected_digits`, :func:`synthetic_corpus` (eSpeak NG, the default), :func:`read_librispeech`,
:func:`read_sphinx_corpus` (AN4), and their checks and summaries. Re-exported by :mod:`asr_ext.data`."""
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from asr_ext.text import CharVocabulary
from kws_quant import data as kd
from kws_quant.features import DEFAULT_SAMPLE_RATE

MANIFEST_COLUMNS = ("utt_id", "text", "speaker", "split", "segments", "duration", "source")
DIGIT_WORDS = kd.DIGIT_WORDS


# -- manifests ----------------------------------------------------------------------------------------------------
def check_manifest(manifest: pd.DataFrame, what: str = "ASR manifest") -> pd.DataFrame:
    """Raise ``ValueError`` for missing columns, bad splits, duplicate ids; returns the manifest."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(manifest.columns)}")
    bad = ~manifest["split"].isin(kd.SPLITS)
    if bad.any():
        row = manifest[bad].iloc[0]
        raise ValueError(f"{what}: {row['source']}: split={row['split']!r} is not one of {list(kd.SPLITS)}")
    dup = manifest["utt_id"].duplicated()
    if dup.any():
        raise ValueError(f"{what}: utt_id {manifest.loc[dup, 'utt_id'].iloc[0]!r} occurs more than once")
    return manifest


def _duration(path: str) -> float:
    kd.check_audio_file(path)
    info = sf.info(path)
    return info.frames / info.samplerate


def file_rows(rows: Sequence[dict]) -> pd.DataFrame:
    """Manifest of single-file utterances from dicts with ``utt_id, path, text, speaker, split[, source]``."""
    out = []
    for r in rows:
        out.append({"utt_id": r["utt_id"], "text": r["text"], "speaker": str(r["speaker"]), "split": r["split"],
                    "segments": ((r["path"], 0.0),), "duration": r.get("duration") or _duration(r["path"]),
                    "source": r.get("source") or r["path"]})
    return check_manifest(pd.DataFrame(out, columns=list(MANIFEST_COLUMNS)))


# -- FSDD connected digits ------------------------------------------------------------------------------------------
def fsdd_connected_digits(root: str, utterances: Sequence[int] = (3000, 300, 500), min_digits: int = 2,
                          max_digits: int = 5, gap_ms: Sequence[float] = (50.0, 300.0),
                          test_speakers: Sequence[str] = ("jackson",), validation_fraction: float = 0.1,
                          seed: int = 0) -> pd.DataFrame:
    """Connected-digit utterances from FSDD recordings ``{digit}_{speaker}_{index}.wav``.

    Each utterance: one speaker, ``min_digits..max_digits`` recordings of that speaker drawn at random (digits may
    repeat), joined with silences drawn uniformly in ``gap_ms`` (also before the first and after the last digit);
    transcript: the digit words (``"three one four"``). Splits: ``test_speakers`` are the test set; the other
    speakers' recordings are split by recording, ``validation_fraction`` of each speaker's to validation (not
    speaker-disjoint from train: FSDD has too few speakers), the rest train; an utterance uses recordings of its
    split only. Speakers take turns utterance by utterance. Everything derives from ``seed``.

    Args:
        utterances: number of utterances for (train, validation, test).
    """
    if len(utterances) != 3 or min(utterances) < 0:
        raise ValueError(f"utterances={tuple(utterances)!r} must be three non-negative counts (train, val, test)")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits; got {min_digits}, {max_digits}")
    if len(gap_ms) != 2 or not 0 <= gap_ms[0] <= gap_ms[1]:
        raise ValueError(f"gap_ms={tuple(gap_ms)!r} must be (low, high) with 0 <= low <= high")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    clips = kd.read_fsdd(root, test_speakers=tuple(test_speakers), digit_words=True)
    rng = np.random.default_rng([seed, 7])
    clips = clips.copy()
    for _, rows in clips[clips["split"] == "train"].groupby("speaker"):
        take = rng.permutation(rows.index.to_numpy())[:int(round(validation_fraction * len(rows)))]
        clips.loc[take, "split"] = "validation"
    durations = {p: _duration(p) for p in clips["path"]}
    out = []
    for split_index, (split, count) in enumerate(zip(kd.SPLITS, utterances)):
        pool = clips[clips["split"] == split]
        if count and pool.empty:
            raise ValueError(f"FSDD {root}: no recordings for the {split} split (test speakers {list(test_speakers)})")
        by_speaker = {s: rows[["path", "label"]].to_numpy() for s, rows in pool.groupby("speaker")}
        speakers = sorted(by_speaker)
        rng = np.random.default_rng([seed, split_index])
        for i in range(count):
            speaker = speakers[i % len(speakers)]
            recs = by_speaker[speaker]
            picks = recs[rng.integers(0, len(recs), int(rng.integers(min_digits, max_digits + 1)))]
            gaps = rng.uniform(gap_ms[0], gap_ms[1], len(picks) + 1).round(1)
            segments = [("", float(gaps[0]))]
            for (path, _), gap in zip(picks, gaps[1:]):
                segments += [(str(path), 0.0), ("", float(gap))]
            names = ", ".join(os.path.basename(p) for p in picks[:, 0])
            out.append({"utt_id": f"fsdd-{split}-{i:05d}", "text": " ".join(picks[:, 1]), "speaker": speaker,
                        "split": split, "segments": tuple(segments),
                        "duration": float(gaps.sum() / 1000.0 + sum(durations[p] for p in picks[:, 0])),
                        "source": f"FSDD connected-digit utterance {split} #{i} ({names})"})
    return check_manifest(pd.DataFrame(out, columns=list(MANIFEST_COLUMNS)))


# -- synthetic (eSpeak NG) ------------------------------------------------------------------------------------------
SENTENCE_WORDS = tuple("""
a about after all also and any are as at back be because been before big black blue book boy but by call can car
cat city cold come could day did do dog don't door down each early eat every eye face far find first five for four
friend from get girl give go good great green had hand has have he her here him his home house how i i'm if in into
is it it's just keep kind know large last late left let life light like line little long look made make man many
may me men might more morning most mother move much music must my name near never new next night nine no not now
number of off old on one only open or other our out over own page paper part people place play point put question
quick read red right river road room run said same saw say school sea second see seven she should show side six
small so some song sound start still stop story study such sun take talk tell ten than that the their them then
there these they thing think this three through time to today together too tree try two under up us use very walk
want was water way we well went were what when where which while white who why will with word work world would
write year yes you young your zero eight
""".split())
"""Words of the synthetic sentences (all within the character vocabulary)."""

SYNTHETIC_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SyntheticASRConfig:
    """What :func:`synthetic_corpus` renders.

    Attributes:
        utterances: total number of utterances.
        digit_fraction: share of digit strings (the rest are sentences of random words from ``words``).
        digits: (min, max) digits per digit string.
        sentence_words: (min, max) words per sentence.
        words: the sentence vocabulary.
        voices: eSpeak NG voices; each is one speaker, taking turns.
        validation_voices, test_voices: the held-out voices (all others train).
        rate_wpm, pitch, pitch_range: uniform ranges per utterance.
        sample_rate: Hz of the rendered WAVs.
        seed: everything random derives from it.
    """

    utterances: int = 2000
    digit_fraction: float = 0.5
    digits: tuple = (2, 5)
    sentence_words: tuple = (2, 5)
    words: tuple = SENTENCE_WORDS
    voices: tuple = kd.DEFAULT_VOICES
    validation_voices: tuple = ("en-us+paul", "en-gb-scotland+f4")
    test_voices: tuple = ("en-us+steph", "en-gb-x-rp+m2", "en-029+m5")
    rate_wpm: tuple = (130, 200)
    pitch: tuple = (25, 75)
    pitch_range: tuple = (20, 80)
    sample_rate: int = DEFAULT_SAMPLE_RATE
    seed: int = 0

    def __post_init__(self):
        for name in ("voices", "words", "validation_voices", "test_voices"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"synthetic {name} must be a sequence of strings, not one string")
        object.__setattr__(self, "voices", tuple(self.voices))
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "validation_voices", tuple(self.validation_voices))
        object.__setattr__(self, "test_voices", tuple(self.test_voices))
        unknown = sorted(set(self.validation_voices + self.test_voices) - set(self.voices))
        if unknown:
            raise ValueError(f"synthetic held-out voice(s) {unknown} are not in voices")
        if not set(self.voices) - set(self.validation_voices + self.test_voices):
            raise ValueError("synthetic voices: no voice left for training")
        if self.utterances < 1 or not 0 <= self.digit_fraction <= 1:
            raise ValueError(f"synthetic utterances={self.utterances} must be >= 1 and digit_fraction in [0, 1]")
        vocab = CharVocabulary()
        for w in self.words:
            vocab.check(w, source=f"synthetic word list entry {w!r}")

    def digest(self) -> str:
        fields = {**dataclasses.asdict(self), "format": SYNTHETIC_FORMAT,
                  "espeakng_loader": importlib.metadata.version("espeakng-loader")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def texts(self) -> list[tuple[str, str]]:
        """``(text, voice)`` per utterance."""
        rng = np.random.default_rng([self.seed, 1])
        out = []
        for i in range(self.utterances):
            if rng.random() < self.digit_fraction:
                n = int(rng.integers(self.digits[0], self.digits[1] + 1))
                text = " ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, n))
            else:
                n = int(rng.integers(self.sentence_words[0], self.sentence_words[1] + 1))
                text = " ".join(self.words[j] for j in rng.integers(0, len(self.words), n))
            out.append((text, self.voices[i % len(self.voices)]))
        return out


def default_cache_dir() -> str:
    """``$KWS_QUANT_CACHE/asr_synthetic`` if set, else ``~/.cache/kws_quant/asr_synthetic``."""
    return os.path.join(os.path.dirname(kd.default_cache_dir()), "asr_synthetic")


def synthetic_corpus(cfg: SyntheticASRConfig = SyntheticASRConfig(), cache_dir: str | None = None) -> pd.DataFrame:
    """Render (or reuse from ``<cache_dir>/<cfg.digest()>/``) the synthetic corpus; returns its manifest."""
    folder = os.path.join(cache_dir or default_cache_dir(), cfg.digest())
    csv_path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(csv_path):
        for voice in cfg.voices:
            kd.check_voice(voice)
        tmp = f"{folder}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "wav"))
        try:
            rows = []
            for i, (text, voice) in enumerate(cfg.texts()):
                rng = np.random.default_rng([cfg.seed, 2, i])
                audio = kd.synthesize(text, voice, int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1)),
                                      int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                                      int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)), cfg.sample_rate)
                name = os.path.join("wav", f"{i:06d}.wav")
                kd.write_wav(os.path.join(tmp, name), audio, cfg.sample_rate)
                split = "test" if voice in cfg.test_voices else \
                    "validation" if voice in cfg.validation_voices else "train"
                rows.append({"utt_id": f"synth-{i:06d}", "path": name, "text": text, "speaker": voice,
                             "split": split, "duration": round(len(audio) / cfg.sample_rate, 6)})
            pd.DataFrame(rows).to_csv(os.path.join(tmp, "manifest.csv"), index=False)
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isfile(csv_path):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    table = pd.read_csv(csv_path, dtype={"text": str, "speaker": str}, keep_default_na=False)
    table["path"] = [os.path.join(folder, p) for p in table["path"]]
    return file_rows(table.to_dict("records"))


# -- LibriSpeech -------------------------------------------------------------------------------------------------
_SUBSET_SPLIT = (("train", "train"), ("dev", "validation"), ("test", "test"))


def read_librispeech(root: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                     max_utterances: int | None = None) -> pd.DataFrame:
    """Read a LibriSpeech-style tree: ``**/<id>.trans.txt`` files with lines ``<utt-id> <TRANSCRIPT>`` and the
    audio ``<utt-id>.flac`` (or ``.wav``) next to them. Speaker = the id's part before the first ``-``.

    Splits: a transcript under a folder named ``train-*``, ``dev-*`` or ``test-*`` (the LibriSpeech subsets) goes to
    train, validation or test; otherwise speaker-disjoint splits by ``fractions`` and ``seed``. ``max_utterances``
    keeps the first N per split (sorted by id). Durations come from the file headers.

    Raises:
        FileNotFoundError: ``root`` missing, no transcripts, or an utterance's audio file missing (naming the
            transcript file and line).
        ValueError: a malformed transcript line (file and line number).
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"LibriSpeech root: directory does not exist: {root}")
    rows = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".trans.txt")):
            trans = os.path.join(folder, name)
            subset = os.path.relpath(trans, root).split(os.sep)
            split = next((s for part in subset[:-1] for prefix, s in _SUBSET_SPLIT
                          if part.lower().startswith(prefix + "-")), None)
            with open(trans, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    parts = line.strip().split(maxsplit=1)
                    if len(parts) != 2:
                        raise ValueError(f"{trans}: line {lineno}: expected '<utterance-id> <transcript>', got "
                                         f"{line.strip()!r}")
                    utt, text = parts
                    audio = next((os.path.join(folder, utt + ext) for ext in (".flac", ".wav")
                                  if os.path.isfile(os.path.join(folder, utt + ext))), None)
                    if audio is None:
                        raise FileNotFoundError(f"{trans}: line {lineno}: audio for {utt!r} not found "
                                                f"({utt}.flac or {utt}.wav in {folder})")
                    rows.append({"utt_id": utt, "path": audio, "text": text, "speaker": utt.split("-")[0],
                                 "split": split, "source": f"{trans} line {lineno} ({os.path.basename(audio)})"})
    if not rows:
        raise FileNotFoundError(f"LibriSpeech root {root}: no *.trans.txt transcripts found")
    table = pd.DataFrame(rows)
    if table["split"].isna().any():
        if table["split"].notna().any():
            raise ValueError(f"LibriSpeech root {root}: some transcripts are under train-*/dev-*/test-* folders and "
                             "some are not; point --data_dir at one layout")
        table = kd.assign_speaker_splits(table.drop(columns="split"), fractions, seed)
    if max_utterances:
        table = table.sort_values("utt_id").groupby("split", group_keys=False).head(int(max_utterances))
    return file_rows(table.to_dict("records"))


def read_sphinx_corpus(root: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> pd.DataFrame:
    """A CMU Sphinx corpus (AN4: ``etc/<set>.transcription`` + ``.fileids``, audio under ``wav/``, ``.sph`` included)
    as an ASR manifest, through :func:`kws_quant.data.read_sphinx` (speaker-disjoint splits; ``*test*`` sets stay
    test). Transcripts are lower-cased (the character vocabulary is lower case)."""
    table = kd.read_sphinx(root, fractions, seed)
    rows = [{"utt_id": r.utt_id, "path": r.path, "text": r.label.lower(), "speaker": r.speaker, "split": r.split,
             "source": f"{r.set}.transcription ({r.utt_id})"} for r in table.itertuples()]
    return file_rows(rows)


# -- targets ----------------------------------------------------------------------------------------------------


def split_summary(manifest: pd.DataFrame) -> dict:
    """Utterances, speakers and hours per split."""
    out = {}
    for split, rows in manifest.groupby("split"):
        out[split] = {"utterances": int(len(rows)), "speakers": sorted(rows["speaker"].unique().tolist()),
                      "hours": round(float(rows["duration"].sum()) / 3600.0, 4)}
    return out
