"""ASR data: vocabulary, FSDD connected digits, LibriSpeech reader, synthetic corpus, the tf.data pipeline and its
errors for bad input."""
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import asr_ext  # noqa: F401
from asr_ext import data as ad
from asr_ext.models import RNNTConfig, encoder_lengths
from asr_ext.text import CharVocabulary, OutOfVocabularyError
from kws_quant.features import FeatureConfig
from shared_data import FSDD_ROOT as FSDD

FEATS = FeatureConfig(sample_rate=8000, n_mels=20, n_fft=256)
VOCAB = CharVocabulary()


def tone(seconds, rate=8000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_rows(tmp_path, texts, split="train", seconds=0.5):
    rows = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{split}_{i}.wav"
        sf.write(path, tone(seconds + 0.1 * i, freq=300 + 50 * i), 8000)
        rows.append(dict(utt_id=f"{split}-{i}", path=str(path), text=text, speaker=f"spk{i % 2}", split=split))
    return rows


# -- vocabulary ------------------------------------------------------------------------------------------------
def test_vocabulary_round_trip_and_oov_errors():
    assert VOCAB.size == 29 and VOCAB.blank == 0 and VOCAB.tokens[1] == " " and VOCAB.tokens[-1] == "'"
    ids = VOCAB.encode("  Don't   STOP ")
    assert 0 not in ids and VOCAB.decode(ids) == "don't stop"
    assert VOCAB.decode([0, 5, 0, 1, 99]) == "d "
    with pytest.raises(OutOfVocabularyError, match=r"books\.txt line 3: transcript 'call 911' has character '9' "
                                                  r"\(U\+0039\) at position 5"):
        VOCAB.encode("call 911", source="books.txt line 3")
    with pytest.raises(OutOfVocabularyError, match="'é'"):
        VOCAB.encode("café")
    with pytest.raises(ValueError, match="empty transcript"):
        VOCAB.encode("   ", source="x")


# -- FSDD ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir(FSDD), reason="FSDD recordings not available")
def test_fsdd_connected_digits_deterministic_and_speaker_disjoint():
    m = ad.fsdd_connected_digits(FSDD, (40, 10, 20), gap_ms=(50, 300), seed=3)
    again = ad.fsdd_connected_digits(FSDD, (40, 10, 20), gap_ms=(50, 300), seed=3)
    pd.testing.assert_frame_equal(m, again)
    assert not m.equals(ad.fsdd_connected_digits(FSDD, (40, 10, 20), seed=4))
    assert set(m[m.split == "test"].speaker) == {"jackson"}
    assert "jackson" not in set(m[m.split != "test"].speaker) and len(set(m[m.split == "train"].speaker)) == 3
    used = {split: {p for segs in rows.segments for p, _ in segs if p} for split, rows in m.groupby("split")}
    assert not used["train"] & used["validation"]  # validation utterances use held-out recordings
    for row in m.itertuples():
        files = [p for p, _ in row.segments if p]
        gaps = [ms for p, ms in row.segments if not p]
        assert 2 <= len(files) <= 5 and len(gaps) == len(files) + 1 and all(50 <= g <= 300 for g in gaps)
        assert all(os.path.basename(p).split("_")[1] == row.speaker for p in files)  # one speaker
        words = [ad.DIGIT_WORDS[int(os.path.basename(p)[0])] for p in files]
        assert row.text == " ".join(words)
    audio = ad.AudioAssembler(8000)(m.segments[0])
    assert abs(len(audio) / 8000 - m.duration[0]) < 2e-3


# -- LibriSpeech -----------------------------------------------------------------------------------------------
def write_librispeech(root, subsets=("train-clean-5", "dev-clean-2"), bad_text=None):
    for s, subset in enumerate(subsets):
        for spk in (100 + s * 10, 101 + s * 10):
            folder = root / subset / str(spk) / "7"
            folder.mkdir(parents=True)
            lines = []
            for u in range(2):
                utt = f"{spk}-7-{u:04d}"
                sf.write(folder / f"{utt}.flac", tone(0.4 + 0.1 * u), 8000, format="FLAC")
                text = "HELLO WORLD" if u == 0 else bad_text or "IT ISN'T ME"
                lines.append(f"{utt} {text}")
            (folder / f"{spk}-7.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_reader_and_oov_error(tmp_path):
    write_librispeech(tmp_path)
    m = ad.read_librispeech(tmp_path)
    assert len(m) == 8 and set(m.split) == {"train", "validation"}
    assert set(m[m.split == "validation"].speaker) == {"110", "111"}
    assert m.text.iloc[1] == "IT ISN'T ME" and m.duration.iloc[0] == pytest.approx(0.4)
    ds = ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=4, bucket_boundaries=[])
    x, y = next(iter(ds))
    texts = sorted(VOCAB.decode(r[r > 0]) for r in x["labels"].numpy())
    assert texts == ["hello world", "hello world", "it isn't me", "it isn't me"]

    bad = tmp_path / "bad"
    write_librispeech(bad, subsets=("test-other",), bad_text="ROOM 101")
    mb = ad.read_librispeech(bad)
    with pytest.raises(OutOfVocabularyError, match=r"100-7\.trans\.txt line 2 .*'ROOM 101' has character '1'"):
        ad.make_asr_dataset(mb, "test", VOCAB, FEATS, batch_size=2)


def test_librispeech_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ad.read_librispeech(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no \\*.trans.txt"):
        ad.read_librispeech(tmp_path)
    folder = tmp_path / "1" / "2"
    folder.mkdir(parents=True)
    (folder / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(FileNotFoundError, match=r"1-2\.trans\.txt: line 1: audio for '1-2-0000' not found"):
        ad.read_librispeech(tmp_path)
    sf.write(folder / "1-2-0000.flac", tone(0.3), 8000, format="FLAC")
    (folder / "1-2.trans.txt").write_text("1-2-0000 HELLO\n1-2-0001\n")
    with pytest.raises(ValueError, match="line 2: expected '<utterance-id> <transcript>'"):
        ad.read_librispeech(tmp_path)


# -- pipeline ------------------------------------------------------------------------------------------------------
def test_pipeline_batches_targets_and_lengths(tmp_path):
    rows = wav_rows(tmp_path, ["one", "two three", "four", "five six seven", "eight", "nine"])
    m = ad.file_rows(rows)
    cfg = RNNTConfig(n_mels=20, frame_stack=3, reduce_after=(0,), lstm_units=(8, 8))
    ds = ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=4, reduction_factors=cfg.reduction_factors,
                             shuffle=False, include_ids=True, bucket_boundaries=[60])
    seen = {}
    for x, y, ids in ds:
        feats, n, labels = x["features"].numpy(), x["feature_lengths"].numpy(), x["labels"].numpy()
        assert feats.shape[1] == n.max() and feats.shape[2] == 20 and labels.dtype == np.int32
        np.testing.assert_array_equal(y.numpy()[:, 0], encoder_lengths(cfg, n))  # logit lengths
        for j, i in enumerate(ids.numpy()):
            u = int((y.numpy()[j, 1:] >= 0).sum())
            assert VOCAB.decode(labels[j, :u]) == rows[i]["text"]
            assert n[j] == FEATS.num_frames(int(round(m.duration[i] * 8000)))
            assert np.all(feats[j, n[j]:] == 0)  # padding
            np.testing.assert_allclose(feats[j, :n[j]].mean(0), 0, atol=5e-3)  # CMVN
            seen[int(i)] = True
    assert sorted(seen) == list(range(6))


def test_bucketed_epoch_has_a_known_length_and_every_utterance_once(tmp_path):
    """Buckets by nominal length: the dataset's cardinality is the real batch count of every epoch, even with speed
    perturbation (which used to move utterances between buckets; Keras then learnt the epoch length by running out
    of data and warned "Your input ran out of data")."""
    rows = wav_rows(tmp_path, [f"w{'o' * i}rd" for i in range(11)])
    m = ad.file_rows(rows)
    aug = ad.ASRAugmentConfig(speed=(0.8, 1.2), noise_prob=0.0, time_masks=0, freq_masks=0)
    ds = ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=2, augment=aug, include_ids=True,
                             bucket_boundaries=[40, 75])
    frames = [FEATS.num_frames(int(round(d * 8000))) for d in m.duration]
    counts = np.bincount(np.searchsorted([40, 75], frames, side="right"), minlength=3)
    assert int(ds.cardinality()) == int(np.ceil(counts / 2).sum())
    for _ in range(2):  # two epochs, reshuffled: the same count, every utterance once
        ids = [i for _, _, b in ds for i in b.numpy()]
        assert sorted(ids) == list(range(11))


def test_pipeline_augmentation_is_deterministic(tmp_path):
    m = ad.file_rows(wav_rows(tmp_path, ["one", "two", "three"]))
    aug = ad.ASRAugmentConfig(speed=(0.8, 1.2), noise_prob=1.0, time_masks=2, freq_masks=2)

    def first(seed):
        ds = ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=3, augment=aug, seed=seed,
                                 bucket_boundaries=[])
        return next(iter(ds))[0]["features"].numpy()

    np.testing.assert_array_equal(first(1), first(1))
    assert first(1).shape != first(2).shape or not np.array_equal(first(1), first(2))


def test_pipeline_surfaces_bad_input(tmp_path):
    rows = wav_rows(tmp_path, ["one", "two"])
    m = ad.file_rows(rows)
    with pytest.raises(ValueError, match="the test split has no utterances"):
        ad.make_asr_dataset(m, "test", VOCAB, FEATS, batch_size=2)
    with pytest.raises(ValueError, match="split='dev' is not allowed"):
        ad.make_asr_dataset(m, "dev", VOCAB, FEATS, batch_size=2)
    # pre-tokenised labels: blank and out-of-range ids are named with their utterance and position
    with_ids = m.assign(label_ids=[np.array([3, 0, 4]), np.array([5])])
    with pytest.raises(ValueError, match=r"utterance train-0\): label_ids\[1\] = 0 equals the blank id"):
        ad.make_asr_dataset(with_ids, "train", VOCAB, FEATS, batch_size=2)
    with_ids = m.assign(label_ids=[np.array([3]), np.array([5, 29])])
    with pytest.raises(ValueError, match=r"label_ids\[1\] = 29 is outside \[1, 29\)"):
        ad.make_asr_dataset(with_ids, "train", VOCAB, FEATS, batch_size=2)
    good = m.assign(label_ids=[np.array([3]), np.array([5, 6])])
    x, y = next(iter(ad.make_asr_dataset(good, "train", VOCAB, FEATS, batch_size=2, bucket_boundaries=[],
                                         shuffle=False)))
    np.testing.assert_array_equal(y.numpy()[:, 1:], [[3, -1], [5, 6]])
    # audio shorter than one analysis window
    short = tmp_path / "short.wav"
    sf.write(short, tone(0.01), 8000)
    m2 = ad.file_rows(rows + [dict(utt_id="tiny", path=str(short), text="a", speaker="x", split="train")])
    with pytest.raises(ValueError, match=r"short\.wav \(utterance tiny\): 0\.010 s of audio gives 0 feature frame"):
        ad.make_asr_dataset(m2, "train", VOCAB, FEATS, batch_size=2)
    # OOV in a plain manifest names the file
    m3 = ad.file_rows([{**rows[0], "text": "one & two"}])
    with pytest.raises(OutOfVocabularyError, match=r"train_0\.wav \(utterance train-0\).*'&'"):
        ad.make_asr_dataset(m3, "train", VOCAB, FEATS, batch_size=2)
    with pytest.raises(ValueError, match="missing column"):
        ad.make_asr_dataset(m.drop(columns="segments"), "train", VOCAB, FEATS, batch_size=2)


def test_synthetic_corpus_renders_once_voice_disjoint(tmp_path):
    cfg = ad.SyntheticASRConfig(utterances=8, voices=("en-us+m3", "en+f1", "en-gb-x-rp+m2"),
                                validation_voices=(), test_voices=("en-gb-x-rp+m2",), sample_rate=8000)
    m = ad.synthetic_corpus(cfg, cache_dir=str(tmp_path))
    assert len(m) == 8 and set(m[m.split == "test"].speaker) == {"en-gb-x-rp+m2"}
    assert not set(m[m.split == "train"].speaker) & {"en-gb-x-rp+m2"}
    for text in m.text:
        VOCAB.encode(text)
    stamp = os.path.getmtime(m.segments[0][0][0])
    again = ad.synthetic_corpus(cfg, cache_dir=str(tmp_path))
    assert os.path.getmtime(again.segments[0][0][0]) == stamp and list(again.text) == list(m.text)
    with pytest.raises(ValueError, match="not in voices"):
        ad.SyntheticASRConfig(voices=("en-us+m3",), test_voices=("en+f1",))
    with pytest.raises(OutOfVocabularyError, match="word list entry 'r2d2'"):
        ad.SyntheticASRConfig(words=("hello", "r2d2"))


def test_mel_warp_and_dynamic_range(tmp_path):
    import tensorflow as tf

    x = tf.constant(np.tile(np.arange(10, dtype=np.float32), (3, 1)))
    np.testing.assert_allclose(ad.mel_warp(x, 1.0).numpy(), x.numpy())
    np.testing.assert_allclose(ad.mel_warp(x, 2.0).numpy()[0], [0, .5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5])
    np.testing.assert_allclose(ad.mel_warp(x, 0.5).numpy()[0], [0, 2, 4, 6, 8, 9, 9, 9, 9, 9])
    m = ad.file_rows(wav_rows(tmp_path, ["one", "two"]))
    x, _ = next(iter(ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=2, cmvn=False, dynamic_range_db=20.0,
                                         bucket_boundaries=[], shuffle=False)))
    feats, n = x["features"].numpy(), x["feature_lengths"].numpy()
    for j in range(2):
        f = feats[j, :n[j]]
        assert f.min() == pytest.approx(f.max() - 2.0 * np.log(10.0), abs=1e-4)
    with pytest.raises(ValueError, match="dynamic_range_db"):
        ad.make_asr_dataset(m, "train", VOCAB, FEATS, batch_size=2, dynamic_range_db=-3.0)
