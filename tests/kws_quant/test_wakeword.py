"""The wake-word task: Sphinx (AN4) and audio-folder readers, the wake-word corpus, trimming and oversampling, stream
plans with dataset noise, detection latency, LiteRT streaming; and the real "alexa" folder when ../shared is there."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from eval.kws_streams import (ClipLoader, StreamConfig, build_streams, load_plan, plan_streams, render_streams,
                              save_plan)
from eval.latency import detection_latencies, latency_summary
from eval.streaming import Stream
from kws_quant.data import (AudioFileError, check_audio_file, check_speaker_disjoint, corpus_layout, make_dataset,
                            power, read_audio_folder, read_sphinx, read_wakeword_corpus, trim_silence)
from shared_data import SHARED_DATA

RATE = 16000


def tone(seconds, freq, amp=0.3, lead=0.0, tail=0.0):
    t = np.arange(int(seconds * RATE)) / RATE
    body = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.concatenate([np.zeros(int(lead * RATE), np.float32), body, np.zeros(int(tail * RATE), np.float32)])


def write(path, audio, rate=RATE, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, rate, **kw)
    return str(path)


def make_sphinx(root, speakers=("fash", "fbbh", "mcen", "mjgk"), ext="flac", fmt=None):
    """AN4's layout: etc/an4_train.{transcription,fileids}, wav/an4_clstk/<speaker>/<utt>.<ext>."""
    lines, ids = [], []
    for s, speaker in enumerate(speakers):
        for n in range(3):
            utt = f"an{n}-{speaker}-b"
            write(os.path.join(root, "wav", "an4_clstk", speaker, f"{utt}.{ext}"), tone(0.5, 300 + 50 * n),
                  format=fmt, subtype="PCM_16")
            lines.append(f"<s> GO {n} </s> ({utt})")
            ids.append(f"an4_clstk/{speaker}/{utt}")
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    open(os.path.join(root, "etc", "an4_train.transcription"), "w").write("\n".join(lines) + "\n")
    open(os.path.join(root, "etc", "an4_train.fileids"), "w").write("\n".join(ids) + "\n")


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("ext,fmt", [("flac", None), ("sph", "NIST")])
def test_sphinx_reader(tmp_path, ext, fmt):
    make_sphinx(str(tmp_path / "an4"), ext=ext, fmt=fmt)
    m = read_sphinx(str(tmp_path / "an4"), fractions=(0.5, 0.25, 0.25), seed=0)
    assert len(m) == 12 and set(m["label"]) == {"GO 0", "GO 1", "GO 2"}
    assert m["path"].str.endswith("." + ext).all() and set(m["speaker"]) == {"fash", "fbbh", "mcen", "mjgk"}
    assert m.loc[0, "utt_id"] == "an0-fash-b" and set(m["set"]) == {"an4_train"}
    check_speaker_disjoint(m)
    assert set(m["split"]) == {"train", "validation", "test"}


def test_sphinx_reader_errors_name_the_file_and_line(tmp_path):
    root = tmp_path / "an4"
    make_sphinx(str(root))
    trans = root / "etc" / "an4_train.transcription"
    text = trans.read_text().splitlines()
    trans.write_text("\n".join(text[:1] + ["<s> GO 9 </s> (an9-fash-b)"] + text[2:]) + "\n")
    with pytest.raises(ValueError, match=r"an4_train.transcription:2: utterance 'an9-fash-b' but .*names "
                                         r"'an4_clstk/fash/an1-fash-b'"):
        read_sphinx(str(root))
    trans.write_text("\n".join(text[:2] + ["GO 3 no id"] + text[3:]) + "\n")
    with pytest.raises(ValueError, match=r"an4_train.transcription:3: not '<s> WORDS </s> \(utt-id\)'"):
        read_sphinx(str(root))
    trans.write_text("\n".join(text) + "\n")
    os.remove(root / "wav" / "an4_clstk" / "fbbh" / "an1-fbbh-b.flac")
    with pytest.raises(FileNotFoundError, match=r"an4_train.fileids:5: no audio file .*an1-fbbh-b"):
        read_sphinx(str(root))
    with pytest.raises(FileNotFoundError, match="no etc/<set>.transcription"):
        read_sphinx(str(tmp_path))


def test_wakeword_corpus_from_folders(tmp_path):
    root = tmp_path / "data"
    for n in range(20):
        write(str(root / "hey" / f"{n}.flac"), tone(0.4, 700, lead=0.5, tail=0.8))
    make_sphinx(str(root / "an4"))
    for word in ("yes", "no"):
        for s in range(6):
            write(str(root / "sc" / word / f"{s:08x}_nohash_0.wav"), tone(0.5, 200), subtype="PCM_16")
    write(str(root / "sc" / "_silence_" / "1.wav"), np.zeros(RATE, np.float32), subtype="PCM_16")
    write(str(root / "sc" / "_background_noise_" / "hum.wav"), tone(2.0, 50), subtype="PCM_16")
    assert corpus_layout(str(root / "an4")) == "sphinx" and corpus_layout(str(root / "sc")) == "speech_commands"
    m, noise = read_wakeword_corpus(str(root), "hey", "hey", ("sc", "an4"), (0.6, 0.2, 0.2), seed=0)
    assert noise == [str(root / "sc" / "_background_noise_" / "hum.wav")]
    assert set(m["label"]) == {"hey", "_unknown_", "_silence_"}
    assert (m.loc[m["corpus"] == "an4", "original_label"].str.startswith("GO")).all()
    assert m["speaker"].str.startswith(("hey/", "sc:", "an4:")).all()
    check_speaker_disjoint(m)
    for corpus in ("hey", "an4"):
        assert set(m.loc[m["corpus"] == corpus, "split"]) == {"train", "validation", "test"}
    os.makedirs(root / "sc" / "hey")
    write(str(root / "sc" / "hey" / "abcd0000_nohash_0.wav"), tone(0.5, 200), subtype="PCM_16")
    with pytest.raises(ValueError, match="cannot hold the wake word"):
        read_wakeword_corpus(str(root), "hey", "hey", ("sc",))
    with pytest.raises(FileNotFoundError, match=r"config.data.wakeword.negatives: folder 'nope' does not exist"):
        read_wakeword_corpus(str(root), "hey", "hey", ("nope",))


def test_audio_folder_reader(tmp_path):
    for n in range(10):
        write(str(tmp_path / "w" / f"{n}.flac"), tone(0.3, 440))
    m = read_audio_folder(str(tmp_path / "w"), "w", (0.6, 0.2, 0.2), seed=3)
    assert len(m) == 10 and m["speaker"].nunique() == 10 and set(m["split"]) == {"train", "validation", "test"}
    with pytest.raises(ValueError, match="no audio files"):
        read_audio_folder(str(tmp_path), "w")


# ---------------------------------------------------------------- bad audio found before training


def test_corrupt_flac_and_non_finite_float_wav_are_bad_files(tmp_path):
    good = write(str(tmp_path / "good.flac"), tone(1.0, 440))
    data = bytearray(open(good, "rb").read())
    data[len(data) // 2:len(data) // 2 + 400] = bytes(400)  # damage the stream, keep the header
    bad = tmp_path / "bad.flac"
    bad.write_bytes(bytes(data))
    sf.info(str(bad))  # the header still reads: only a decode finds it
    with pytest.raises(AudioFileError, match=r"bad.flac: could not decode audio"):
        check_audio_file(str(bad))
    x = tone(0.5, 440)
    x[100] = np.nan
    nan = write(str(tmp_path / "nan.wav"), x, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"nan.wav: 1 sample\(s\) are NaN or infinite"):
        check_audio_file(nan)
    check_audio_file(good)


# ---------------------------------------------------------------- pipeline: trimming, cardinality


def test_trim_silence_and_trimmed_crop_keeps_the_speech(tmp_path):
    x = tone(0.3, 440, lead=0.2, tail=2.0)
    trimmed = trim_silence(x, 30)
    assert abs(len(trimmed) - 0.3 * RATE) < 0.01 * RATE
    assert trim_silence(np.zeros(10, np.float32)).size == 10
    path = write(str(tmp_path / "late.wav"), x, subtype="PCM_16")
    manifest = pd.DataFrame({"path": [path], "label": ["kw"], "speaker": ["a"], "split": ["test"]})
    plain = next(iter(make_dataset(manifest, "test", ["kw"], batch_size=1)))[0].numpy()
    trim = next(iter(make_dataset(manifest, "test", ["kw"], batch_size=1, trim_db=30)))[0].numpy()
    # the centred 1-s crop of the 2.5-s take (0.75-1.75 s) misses the tone (0.2-0.5 s); of the trimmed take, not
    assert plain.max() == plain.min() and trim.max() - trim.min() > 10


def test_evaluation_dataset_knows_its_length(tmp_path):
    paths = [write(str(tmp_path / f"{n}.wav"), tone(0.2, 300), subtype="PCM_16") for n in range(5)]
    manifest = pd.DataFrame({"path": paths, "label": "kw", "speaker": "a", "split": "test"})
    ds = make_dataset(manifest, "test", ["kw"], batch_size=2)
    assert int(ds.cardinality()) == 3 == len(list(ds))


# ---------------------------------------------------------------- stream plans


@pytest.fixture
def small_split(tmp_path):
    rows = []
    for n in range(6):
        rows.append((write(str(tmp_path / "kw" / f"{n}.wav"), tone(0.5, 800, lead=0.3), subtype="PCM_16"), "kw"))
        rows.append((write(str(tmp_path / "other" / f"{n}.wav"), tone(0.6, 200), subtype="PCM_16"), "_unknown_"))
    noise = write(str(tmp_path / "noise" / "hum.wav"),
                  np.random.default_rng(0).normal(0, 0.05, 3 * RATE).astype(np.float32), subtype="PCM_16")
    manifest = pd.DataFrame(rows, columns=["path", "label"]).assign(speaker="s", split="test")
    return manifest, noise


def test_plan_round_trips_and_renders_identical_audio(small_split, tmp_path):
    manifest, noise = small_split
    cfg = StreamConfig(stream_seconds=4.0, negative_hours=0.002, snr_db=10.0, noise_paths=(noise,), seed=3)
    plan = plan_streams(manifest, "test", ["kw"], RATE, cfg)
    path = str(tmp_path / "streams.json")
    save_plan(plan, path)
    again = load_plan(path)
    assert again == json.loads(json.dumps(plan))
    a, b = render_streams(plan), render_streams(again)
    assert all(np.array_equal(x.audio, y.audio) and x.events == y.events for x, y in zip(a, b))
    assert [np.array_equal(x.audio, y.audio) for x, y in zip(a, build_streams(manifest, "test", ["kw"], RATE, cfg))]
    assert sum(len(s.events) for s in a) == 6 and all(st["noise"]["kind"] == "file" for st in plan["streams"])
    # the noise is 10 dB below the speech segments' power
    clean = render_streams({**plan, "streams": [{**st, "noise": {**st["noise"], "snr_db": 300.0}}
                                                for st in plan["streams"]]})
    for st, noisy, dry in zip(plan["streams"], a, clean):
        speech = np.concatenate([dry.audio[g["start"]:g["start"] + g["samples"]] for g in st["segments"]])
        np.testing.assert_allclose(10 * np.log10(power(speech) / power(noisy.audio - dry.audio)), 10.0, atol=0.05)


def test_bad_plans_are_refused(small_split, tmp_path):
    manifest, _ = small_split
    plan = plan_streams(manifest, "test", ["kw"], RATE, StreamConfig(stream_seconds=4.0, negative_hours=0.0))
    path = str(tmp_path / "p.json")
    for broken, why in ((dict(plan, format=7), "format"), (dict(plan, sample_rate=-1), "sample_rate"),
                        (dict(plan, streams=[dict(plan["streams"][0], samples=10)]), "bad segment")):
        save_plan(broken, path)
        with pytest.raises(ValueError, match=f"p.json: not a stream plan: .*{why}"):
            load_plan(path)
    open(path, "w").write("{ truncated")
    with pytest.raises(ValueError, match="p.json: not a readable stream plan"):
        load_plan(path)
    first = plan["streams"][0]["segments"][0]["path"]
    write(first, tone(0.9, 800), subtype="PCM_16")  # the file changed after planning
    with pytest.raises(ValueError, match="the file changed; make a new plan"):
        render_streams(plan, ClipLoader(RATE))


# ---------------------------------------------------------------- latency


def test_detection_latency_from_event_end():
    hop = 0.02
    scores = np.zeros((500, 2), np.float32)
    scores[:, 0] = 1.0
    scores[260:270] = [0.0, 1.0]   # fires at 5.2 s; the keyword ends at 5.0 s
    scores[455:460] = [0.0, 1.0]   # fires at 9.1 s, before the second keyword ends (9.3 s)
    events = ((4.5, 5.0, "kw"), (8.8, 9.3, "kw"), (2.0, 2.5, "kw"))  # the third is missed
    lat = detection_latencies([Stream(scores, events=events)], 1, "kw", 0.5, hop_s=hop, tolerance_s=0.5)
    np.testing.assert_allclose(sorted(lat), [-0.2, 0.2], atol=1e-9)
    s = latency_summary(lat)
    assert s["hits"] == 2 and s["median_s"] == pytest.approx(0.0) and s["max_s"] == pytest.approx(0.2)
    assert latency_summary(np.zeros(0))["hits"] == 0


# ---------------------------------------------------------------- LiteRT streaming runner


def test_litert_streaming_runner_matches_the_keras_runner(tmp_path):
    pytest.importorskip("ai_edge_litert")
    import keras

    from kws_quant.export import tflite as T
    from kws_quant.export.litert_stream import LiteRTStreamingRunner
    from kws_quant.models import KWSModelConfig, StreamingRunner, build_kws_model

    from kws_quant import qat

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rep = rng.normal(size=(64, 20, 8)).astype(np.float32)
    feats = rng.normal(size=(75, 8)).astype(np.float32)
    cfg = KWSModelConfig(window_frames=20, n_mels=8, hidden=(16, 16))
    model = build_kws_model(cfg, 3, "float")
    path = T.to_tflite(model, str(tmp_path / "f.tflite"), quantize=False)
    lite = LiteRTStreamingRunner(path, hop_frames=3, chunk=7).posteriors(feats)
    ref = StreamingRunner(model, hop_frames=3).posteriors(feats)
    assert lite.shape == ref.shape == (19, 3)
    np.testing.assert_allclose(lite, ref, atol=1e-4)  # float32 LiteRT vs TF kernels
    q = build_kws_model(cfg, 3, "tanh4")
    qat.calibrate(q, rep)
    path = T.to_tflite(q, str(tmp_path / "q.tflite"), rep)
    lite = LiteRTStreamingRunner(path, hop_frames=3).posteriors(feats)
    ref = StreamingRunner(q, hop_frames=3).posteriors(feats)
    # int8 logits are within one output step of Keras'; posteriors then differ by a few hundredths at most
    np.testing.assert_allclose(lite, ref, atol=0.05)


# ---------------------------------------------------------------- the real folders (../shared)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "alexa")), reason="../shared/data is absent")
def test_shared_wakeword_corpus():
    m, noise = read_wakeword_corpus(SHARED_DATA, "alexa", "alexa", ("speech_commands", "an4", "fsdd"),
                                    (0.6, 0.15, 0.25), seed=0)
    assert (m["label"] == "alexa").sum() == 260 and len(noise) == 6
    check_speaker_disjoint(m)
    an4 = read_sphinx(os.path.join(SHARED_DATA, "an4"), (0.75, 0.25, 0.0))
    assert len(an4) == 948 and an4["speaker"].nunique() == 74
    assert an4.loc[an4["split"] == "validation", "speaker"].nunique() >= 8
