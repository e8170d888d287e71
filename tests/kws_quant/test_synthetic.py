"""eSpeak NG synthesis and the cached synthetic keyword corpus: determinism, content, splits, config checks."""
import os

import numpy as np
import pytest
import soundfile as sf

from kws_quant.data import (
    NON_KEYWORDS,
    SILENCE_LABEL,
    UNKNOWN_LABEL,
    SyntheticConfig,
    check_speaker_disjoint,
    keyword_label,
    list_voices,
    power,
    synthesize,
    synthetic_corpus,
)

VOICES = ("en+m1", "en-us+f3", "en-gb-x-rp+m3", "en-029+klatt", "en-us-nyc+f2", "en-gb-scotland+Andy")
SMALL = SyntheticConfig(clips_per_keyword=12, unknown_clips=12, silence_clips=6, voices=VOICES,
                        split_fractions=(4 / 6, 1 / 6, 1 / 6), seed=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic_corpus(SMALL, str(root)), root


def test_synthesize_speaks_and_is_history_independent():
    accents, variants = list_voices()
    assert {"en", "en-us", "en-gb-x-rp"} <= set(accents) and {"f3", "m3", "klatt", "robosoft2"} <= set(variants)
    first = synthesize("hey computer", "en-us+f3")
    assert first.dtype == np.float32 and 0.4 < first.shape[0] / 16000 < 1.2 and 0 < np.abs(first).max() <= 1
    for voice in ("en+robosoft2", "en-gb-x-rp+croak", "en+klatt4", "en-029+Demonic"):  # state that used to leak
        synthesize("a different sentence, spoken quickly", voice, rate=400, pitch=90, pitch_range=5)
        np.testing.assert_array_equal(synthesize("hey computer", "en-us+f3"), first)
    assert not np.array_equal(synthesize("hey computer", "en-us+m3")[:8000], first[:8000])
    slow = synthesize("hey computer", "en-us+f3", rate=100)
    assert slow.shape[0] > 1.3 * first.shape[0]
    at_8k = synthesize("hey computer", "en-us+f3", sample_rate=8000)
    assert abs(at_8k.shape[0] - first.shape[0] / 2) <= 2


def test_synthesize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="voice 'xx-nowhere' not found"):
        synthesize("hello", "xx-nowhere")
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ")
    with pytest.raises(ValueError, match=r"rate=50 outside \[80, 450\]"):
        synthesize("hello", rate=50)


def test_corpus_manifest_labels_and_voice_disjoint_splits(corpus):
    manifest, root = corpus
    assert list(manifest.columns[:4]) == ["path", "label", "speaker", "split"]
    assert manifest.label.value_counts().to_dict() == {"hey_computer": 12, UNKNOWN_LABEL: 12, SILENCE_LABEL: 6}
    assert SMALL.label_names == [SILENCE_LABEL, UNKNOWN_LABEL, "hey_computer"]
    check_speaker_disjoint(manifest)
    assert manifest.groupby("split").speaker.nunique().to_dict() == {"test": 1, "train": 4, "validation": 1}
    assert set(manifest.speaker) == set(VOICES)
    assert (manifest[manifest.label == "hey_computer"].text == "hey computer").all()
    unknown = manifest[manifest.label == UNKNOWN_LABEL]
    assert unknown.text.isin(NON_KEYWORDS).all() and unknown.snr_db.between(5, 30).all()
    assert all(p.startswith(str(root / SMALL.digest())) for p in manifest.path)


def test_corpus_clips_have_right_length_and_content(corpus):
    manifest, _ = corpus
    speech_floor = 10 ** (SMALL.speech_dbfs[0] / 20)
    silence_ceiling = 10 ** (SMALL.silence_dbfs[1] / 20)
    for row in manifest.itertuples():
        audio, rate = sf.read(row.path, dtype="float32")
        assert rate == 16000 and audio.shape == (16000,)
        rms = np.sqrt(power(audio))
        if row.label == SILENCE_LABEL:
            assert 0 < rms <= silence_ceiling * 1.01
        else:
            assert rms >= speech_floor * 0.98 and np.abs(audio).max() <= 0.99 + 1e-4


def test_corpus_is_deterministic_cached_and_seed_dependent(corpus, tmp_path):
    manifest, _ = corpus
    again = synthetic_corpus(SMALL, str(tmp_path / "again"))
    for a, b in zip(manifest.path, again.path):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
    before = os.path.getmtime(again.path.iloc[0])
    assert synthetic_corpus(SMALL, str(tmp_path / "again")).path.tolist() == again.path.tolist()
    assert os.path.getmtime(again.path.iloc[0]) == before

    other_seed = SyntheticConfig(**{**SMALL.__dict__, "seed": 4, "unknown_clips": 0, "silence_clips": 0,
                                    "clips_per_keyword": 3})
    other = synthetic_corpus(other_seed, str(tmp_path / "again"))
    assert other_seed.digest() != SMALL.digest()
    assert not np.array_equal(sf.read(other.path.iloc[0])[0], sf.read(manifest.path.iloc[0])[0])


def test_several_keywords_and_explicit_test_voices(tmp_path):
    cfg = SyntheticConfig(keywords=("Hey computer", "lights on"), non_keywords=("computer", "lights", "lights on"),
                          clips_per_keyword=3, unknown_clips=4, silence_clips=2, voices=VOICES[:3],
                          test_voices=("en+m1",), seed=1)
    assert cfg.label_names == [SILENCE_LABEL, UNKNOWN_LABEL, "hey_computer", "lights_on"]
    assert cfg.unknown_texts == ("computer", "lights")
    manifest = synthetic_corpus(cfg, str(tmp_path))
    assert manifest.label.value_counts().to_dict() == {UNKNOWN_LABEL: 4, "hey_computer": 3, "lights_on": 3,
                                                       SILENCE_LABEL: 2}
    assert set(manifest[manifest.split == "test"].speaker) == {"en+m1"}
    assert set(manifest.split) == {"train", "test"}


def test_config_checks_and_vocabulary(tmp_path):
    assert keyword_label("  Hey   Computer ") == "hey_computer"
    assert len(NON_KEYWORDS) >= 150 and {"computing", "commuter", "hey", "computer"} <= set(NON_KEYWORDS)
    assert "hey computer" not in SyntheticConfig().unknown_texts
    with pytest.raises(ValueError, match="keywords must be non-empty"):
        SyntheticConfig(keywords=())
    with pytest.raises(ValueError, match="duplicate labels"):
        SyntheticConfig(keywords=("hey computer", "Hey  Computer"))
    with pytest.raises(ValueError, match="no non-keyword texts"):
        SyntheticConfig(non_keywords=("hey computer",))
    with pytest.raises(ValueError, match=r"voice 'en\+nobody' not found"):
        synthetic_corpus(SyntheticConfig(voices=("en-us+f1", "en+nobody"), clips_per_keyword=1, unknown_clips=0,
                                         silence_clips=0), str(tmp_path))
    assert os.listdir(tmp_path) == []
