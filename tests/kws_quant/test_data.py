"""Readers, manifests, speaker-disjoint splits, bad-input errors, audio conversion, augmentation and tf.data."""
import glob
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tensorflow as tf

from kws_quant.data import (
    AudioFileError,
    AugmentConfig,
    SPLITS,
    assign_speaker_splits,
    augment,
    check_speaker_disjoint,
    coloured_noise,
    find_bad_files,
    fit_length,
    label_indices,
    load_audio,
    load_audio_files,
    make_dataset,
    mix_at_snr,
    power,
    random_gain,
    random_segment,
    read_csv_manifest,
    read_fsdd,
    read_speech_commands,
    relabel_unknown,
    time_shift,
    validate_manifest,
    write_wav,
)
from kws_quant.features import FeatureConfig, logmel_tf
from shared_data import FSDD_RECORDINGS as FSDD



def tone(seconds=0.5, rate=16000, freq=440.0, amp=0.3, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def write(path, audio=None, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, tone() if audio is None else audio, rate, subtype="PCM_16")
    return str(path)


# ---------------------------------------------------------------- Speech Commands


@pytest.fixture
def speech_commands(tmp_path):
    root = tmp_path / "sc"
    for label, speakers in {"yes": ["aa11", "bb22", "cc33"], "no": ["aa11", "dd44"], "up": ["bb22", "ee55"]}.items():
        for speaker in speakers:
            for n in range(2):
                write(str(root / label / f"{speaker}_nohash_{n}.wav"), tone(0.3, freq=200 + 100 * n))
    write(str(root / "_background_noise_" / "white.wav"), np.random.default_rng(0).uniform(-.1, .1, 8000))
    (root / "README.md").write_text("not a class")
    (root / "validation_list.txt").write_text("yes/bb22_nohash_0.wav\nyes/bb22_nohash_1.wav\nup/bb22_nohash_0.wav\n"
                                              "up/bb22_nohash_1.wav\n")
    (root / "testing_list.txt").write_text("no/dd44_nohash_0.wav\nno/dd44_nohash_1.wav\n")
    return root


def test_speech_commands_reader(speech_commands):
    manifest, noise = read_speech_commands(str(speech_commands), silence_fraction=0)
    assert list(manifest.columns[:4]) == ["path", "label", "speaker", "split"]
    assert len(manifest) == 14 and sorted(manifest["label"].unique()) == ["no", "up", "yes"]
    assert noise == [str(speech_commands / "_background_noise_" / "white.wav")]
    assert set(manifest[manifest.split == "validation"].speaker) == {"bb22"}
    assert set(manifest[manifest.split == "test"].speaker) == {"dd44"}
    assert manifest.split.value_counts().to_dict() == {"train": 8, "validation": 4, "test": 2}
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in manifest.path)


def test_full_dataset_layout_cuts_silence_from_background_noise(speech_commands):
    """The full dataset has no _silence_ folder: 10 % silence clips per split are cut from _background_noise_, and
    the pipeline reads exactly that excerpt."""
    noise = np.random.default_rng(1).uniform(-.1, .1, 3 * 16000).astype(np.float32)
    write(str(speech_commands / "_background_noise_" / "white.wav"), noise)
    for n in range(30):  # enough clips for silence in every split
        write(str(speech_commands / "up" / f"ff{n:02d}_nohash_0.wav"), tone(0.3))
    manifest, _ = read_speech_commands(str(speech_commands), seed=0)
    silence = manifest[manifest["label"] == "_silence_"]
    words = manifest[manifest["label"] != "_silence_"]
    for split, count in words["split"].value_counts().items():
        assert (silence["split"] == split).sum() == round(0.1 * count)
    assert silence["start_s"].between(0, 2.0).all() and words["start_s"].isna().all()
    check_speaker_disjoint(manifest)
    again, _ = read_speech_commands(str(speech_commands), seed=0)
    assert again.equals(manifest)
    row = silence.iloc[[0]]
    clip = next(iter(make_dataset(row, row["split"].iloc[0], ["_silence_"], batch_size=1)))[0].numpy()[0]
    first = int(round(row["start_s"].iloc[0] * 16000))
    pcm = load_audio(row["path"].iloc[0], 16000)  # the 16-bit file's values
    expected = logmel_tf(tf.constant(pcm[first:first + 16000][None]), FeatureConfig()).numpy()[0]
    np.testing.assert_allclose(clip, expected, atol=1e-2)  # that excerpt: another offset differs by ~1


def test_speech_commands_without_lists_gets_speaker_disjoint_split(speech_commands):
    os.remove(speech_commands / "validation_list.txt")
    os.remove(speech_commands / "testing_list.txt")
    manifest, _ = read_speech_commands(str(speech_commands), seed=3)
    check_speaker_disjoint(manifest)
    assert set(manifest.split) == set(SPLITS)


def test_speech_commands_errors(speech_commands, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory does not exist: .*missing"):
        read_speech_commands(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"up/.*\.wav: label='up' is not in the label set"):
        read_speech_commands(str(speech_commands), label_names=["yes", "no"])
    with open(speech_commands / "testing_list.txt", "a") as f:
        f.write("no/zz99_nohash_0.wav\n")
    with pytest.raises(FileNotFoundError, match=r"testing_list.txt: listed file does not exist: .*zz99_nohash_0.wav"):
        read_speech_commands(str(speech_commands))


def test_relabel_unknown(speech_commands):
    manifest, _ = read_speech_commands(str(speech_commands))
    relabelled = relabel_unknown(manifest, ["yes"])
    assert set(relabelled.label) == {"yes", "_unknown_"}
    assert (relabelled.original_label == manifest.label).all()


# ---------------------------------------------------------------- FSDD


def fsdd_tree(root, speakers=("alice", "bob", "carol", "dave"), digits=3, takes=2):
    for speaker in speakers:
        for digit in range(digits):
            for take in range(takes):
                write(str(root / f"{digit}_{speaker}_{take}.wav"), tone(0.2, 8000, 300 + 50 * digit), 8000)
    (root / "notes.txt").write_text("ignored")
    return root


def test_fsdd_reader_labels_and_splits(tmp_path):
    root = fsdd_tree(tmp_path / "fsdd")
    manifest = read_fsdd(str(root))
    assert len(manifest) == 24 and set(manifest.label) == {"zero", "one", "two"}
    check_speaker_disjoint(manifest)
    assert manifest.groupby("split").speaker.nunique().to_dict() == {"test": 1, "train": 2, "validation": 1}
    pd.testing.assert_frame_equal(manifest, read_fsdd(str(root)))
    assert set(read_fsdd(str(root), digit_words=False).label) == {"0", "1", "2"}
    explicit = read_fsdd(str(root), validation_speakers=["bob"], test_speakers=["carol"])
    assert explicit.groupby("split").speaker.unique().map(sorted).to_dict() == {
        "test": ["carol"], "train": ["alice", "dave"], "validation": ["bob"]}
    with pytest.raises(ValueError, match=r"test_speakers: speaker\(s\) \['zed'\] not in the data"):
        read_fsdd(str(root), test_speakers=["zed"])
    with pytest.raises(FileNotFoundError, match="FSDD root: directory does not exist"):
        read_fsdd(str(tmp_path / "nope"))


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="FSDD recordings not available")
def test_fsdd_reader_on_real_recordings():
    manifest = read_fsdd(FSDD)
    assert len(manifest) == 2000
    assert set(manifest.speaker) == {"george", "jackson", "nicolas", "yweweler"}
    assert sorted(manifest.label.unique()) == sorted(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                                      "eight", "nine"])
    check_speaker_disjoint(manifest)
    assert manifest.groupby("split").speaker.nunique().to_dict() == {"test": 1, "train": 2, "validation": 1}
    path = manifest.path.iloc[0]
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and abs(audio.shape[0] - 2 * sf.info(path).frames) <= 1


# ---------------------------------------------------------------- CSV manifests


def test_csv_manifest_resolves_paths_and_assigns_splits(tmp_path):
    for name in ["a", "b", "c", "d", "e", "f"]:
        write(str(tmp_path / "audio" / f"{name}.wav"))
    csv = tmp_path / "meta" / "list.csv"
    csv.parent.mkdir()
    rows = [f"../audio/{n}.wav,{'yes' if i % 2 else 'no'},spk{i // 2}" for i, n in enumerate("abcdef")]
    csv.write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    manifest = read_csv_manifest(str(csv), label_names=["yes", "no"])
    assert manifest.path.iloc[0] == str(tmp_path / "audio" / "a.wav")
    check_speaker_disjoint(manifest)
    assert set(manifest.split) == set(SPLITS)
    pd.testing.assert_frame_equal(manifest, read_csv_manifest(str(csv), seed=0))

    no_speaker = tmp_path / "meta" / "no_speaker.csv"
    no_speaker.write_text("path,label,split,extra\n../audio/a.wav,yes,train,1.5\n../audio/b.wav,no,test,\n")
    manifest = read_csv_manifest(str(no_speaker))
    assert list(manifest.speaker) == list(manifest.path) and list(manifest.split) == ["train", "test"]
    assert manifest.extra.iloc[0] == 1.5 and np.isnan(manifest.extra.iloc[1])


@pytest.mark.parametrize("content, error, message", [
    ("file,label\nx.wav,yes\n", ValueError, r"bad.csv: missing required column 'path'"),
    ("path,speaker\nx.wav,s\n", ValueError, r"bad.csv: missing required column 'label'"),
    ("path,label\nmissing.wav,yes\n", FileNotFoundError, r"listed file does not exist: .*missing.wav"),
    ("path,label\nok.wav,maybe\n", ValueError, r"ok.wav: label='maybe' is not in the label set \['no', 'yes'\]"),
    ("path,label,split\nok.wav,yes,dev\n", ValueError, r"ok.wav: split='dev' is not one of"),
    ("path,label\nok.wav,\n", ValueError, r"row 2: empty 'label'"),
    ("path,label,speaker,split\nok.wav,yes,s,train\nok2.wav,no,s,test\n", ValueError,
     r"speaker='s' appears in several splits \['test', 'train'\]"),
])
def test_csv_manifest_errors(tmp_path, content, error, message):
    write(str(tmp_path / "ok.wav"))
    write(str(tmp_path / "ok2.wav"))
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(error, match=message):
        read_csv_manifest(str(tmp_path / "bad.csv"), label_names=["yes", "no"])


def test_csv_manifest_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV manifest does not exist: .*nothing.csv"):
        read_csv_manifest(str(tmp_path / "nothing.csv"))


# ---------------------------------------------------------------- speaker-disjoint splits


def random_manifest(num_speakers=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(f"/x/{s}_{i}.wav", "yes", f"s{s}") for s in range(num_speakers) for i in range(int(rng.integers(1, 30)))]
    return pd.DataFrame(rows, columns=["path", "label", "speaker"])


@pytest.mark.parametrize("num_speakers, seed", [(3, 0), (4, 1), (40, 2), (200, 3)])
def test_assign_speaker_splits_is_disjoint_deterministic_and_balanced(num_speakers, seed):
    manifest = random_manifest(num_speakers, seed)
    split = assign_speaker_splits(manifest, (0.8, 0.1, 0.1), seed=seed)
    assert split.groupby("speaker").split.nunique().max() == 1
    assert set(split.split) == set(SPLITS)
    validate_manifest(split, check_files=False)
    pd.testing.assert_frame_equal(split, assign_speaker_splits(manifest.sample(frac=1, random_state=0),
                                                               (0.8, 0.1, 0.1), seed=seed).loc[split.index])
    if num_speakers >= 40:
        shares = split.split.value_counts(normalize=True)
        assert abs(shares["train"] - 0.8) < 0.1 and abs(shares["test"] - 0.1) < 0.07
        other = assign_speaker_splits(manifest, (0.8, 0.1, 0.1), seed=seed + 100)
        assert not (other.split == split.split).all()


def test_assign_speaker_splits_fraction_edge_cases_and_errors():
    manifest = random_manifest(10)
    assert set(assign_speaker_splits(manifest, (1.0, 0.0, 0.0)).split) == {"train"}
    assert set(assign_speaker_splits(manifest, (0.0, 0.5, 0.5)).split) == {"validation", "test"}
    with pytest.raises(ValueError, match="summing to 1"):
        assign_speaker_splits(manifest, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"speaker\(s\) \['s1'\] listed for both validation and test"):
        assign_speaker_splits(manifest, validation_speakers=["s1"], test_speakers=["s1", "s2"])
    with pytest.raises(ValueError, match="missing required column"):
        validate_manifest(manifest, check_files=False)


# ---------------------------------------------------------------- audio files


def test_stereo_and_odd_rates_are_converted(tmp_path):
    stereo = write(str(tmp_path / "stereo.wav"), tone(1.0, 44100, 1000.0, channels=2), 44100)
    audio = load_audio(stereo, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(audio.shape[0] - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) - 1000) <= 1 and abs(np.sqrt(2 * power(audio[1000:-1000])) - 0.3) < 0.01
    left_only = np.stack([tone(0.5, 22050), np.zeros(11025, np.float32)], axis=1)
    mixed = load_audio(write(str(tmp_path / "left.wav"), left_only, 22050), 22050)
    np.testing.assert_allclose(mixed, left_only[:, 0] / 2, atol=1e-4)
    assert load_audio(write(str(tmp_path / "8k.wav"), tone(0.5, 8000), 8000), 16000).shape == (8000,)


@pytest.fixture
def bad_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_samples = str(tmp_path / "no_samples.wav")
    sf.write(no_samples, np.zeros(0, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    garbage = bytes(np.random.default_rng(0).integers(0, 255, 64, np.uint8))
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + garbage)
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio\n" * 20)
    return {"empty": (str(empty), "file is empty"), "no_samples": (no_samples, "audio file contains no samples"),
            "corrupt": (str(corrupt), "not a readable audio file"), "text": (str(text), "not a readable audio file"),
            "missing": (str(tmp_path / "missing.wav"), "file does not exist")}


def test_bad_audio_files_raise_naming_file_and_reason(bad_files):
    for path, reason in bad_files.values():
        with pytest.raises(AudioFileError, match=f"{path}: {reason}") as info:
            load_audio(path)
        assert info.value.path == path


def test_skip_bad_files_returns_summary(tmp_path, bad_files, capsys):
    good = write(str(tmp_path / "good.wav"))
    paths = [good] + [p for p, _ in bad_files.values()]
    with pytest.raises(AudioFileError, match=r"5 bad audio file\(s\)") as info:
        load_audio_files(paths)
    assert "--skip_bad_files on the command line" in str(info.value) and "skip_bad_files=True" in str(info.value)
    audio, bad = load_audio_files(paths, skip_bad_files=True)
    assert len(audio) == 1 and audio[0].shape == (8000,)
    assert {(b.path, b.reason.split(" (")[0]) for b in bad} == {(p, r) for p, r in bad_files.values()}
    printed = capsys.readouterr().err
    assert "5 bad audio file(s)" in printed and all(p in printed for p, _ in bad_files.values())
    assert [b.path for b in find_bad_files(paths, skip_bad_files=True)] == paths[1:]


def test_fit_length_and_write_wav(tmp_path):
    x = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 6), x[2:8])
    np.testing.assert_array_equal(fit_length(x, 14), np.r_[0, 0, x, 0, 0])
    rng = np.random.default_rng(0)
    crops = {tuple(fit_length(x, 4, rng)) for _ in range(30)}
    assert len(crops) > 3 and all(len(c) == 4 for c in crops)
    np.testing.assert_array_equal(fit_length(x, 4, np.random.default_rng(5)),
                                  fit_length(x, 4, np.random.default_rng(5)))
    audio = tone(0.1)
    write_wav(tmp_path / "a.wav", audio, 16000)
    write_wav(tmp_path / "b.wav", audio, 16000)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    np.testing.assert_allclose(load_audio(str(tmp_path / "a.wav")), audio, atol=1 / 32767)


# ---------------------------------------------------------------- augmentation


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0, 40.0])
def test_mix_at_snr_achieves_requested_snr(snr_db):
    rng = np.random.default_rng(int(snr_db) + 10)
    signal = tone(1.0, amp=0.2) * np.linspace(0, 1, 16000, dtype=np.float32)
    noise = coloured_noise(16000, 1.0, rng) * 3.0
    mixed = mix_at_snr(signal, noise, snr_db)
    achieved = 10 * np.log10(power(signal) / power(mixed - signal))
    assert abs(achieved - snr_db) < 1e-3
    silent = mix_at_snr(np.zeros(16000, np.float32), noise, 20.0)
    assert abs(10 * np.log10(0.01 / power(silent)) - 20.0) < 1e-3


def test_gain_shift_noise_and_segments():
    rng = np.random.default_rng(0)
    x = tone(0.1)
    gains = [np.max(np.abs(random_gain(x, (-6.0, 6.0), rng))) / np.max(np.abs(x)) for _ in range(200)]
    assert 10 ** (-6 / 20) - 1e-6 <= min(gains) < 0.6 and 1.9 < max(gains) <= 10 ** (6 / 20) + 1e-6
    y = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(time_shift(y, 2), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(time_shift(y, -2), [3, 4, 5, 0, 0])
    np.testing.assert_array_equal(time_shift(y, 0), y)
    assert random_segment(y, 12, rng).shape == (12,)
    for exponent in (0.0, 1.0, 2.0):
        noise = coloured_noise(2**15, exponent, np.random.default_rng(1))
        assert abs(power(noise) - 1) < 1e-5 and abs(noise.mean()) < 1e-6
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        freqs = np.fft.rfftfreq(2**15)
        slope = np.polyfit(np.log(freqs[10:]), np.log(spectrum[10:]), 1)[0]
        assert abs(slope + exponent) < 0.1


def test_augment_is_deterministic_for_a_seed():
    x = tone(1.0)
    cfg = AugmentConfig(noises=(coloured_noise(5000, 1.0, np.random.default_rng(0)),), noise_prob=1.0)
    a = augment(x, cfg, np.random.default_rng(7))
    np.testing.assert_array_equal(a, augment(x, cfg, np.random.default_rng(7)))
    assert a.shape == x.shape and a.dtype == np.float32
    assert not np.array_equal(a, augment(x, cfg, np.random.default_rng(8)))
    plain = augment(x, AugmentConfig(noise_prob=0.0, gain_db=(0.0, 0.0), max_shift=0), np.random.default_rng(0))
    np.testing.assert_array_equal(plain, x)


# ---------------------------------------------------------------- tf.data pipeline


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_make_dataset_shapes_labels_and_features(small_dataset):
    manifest, _ = small_dataset
    labels = ["no", "yes", "up"]
    ds = make_dataset(manifest, "train", labels, batch_size=8, shuffle=False)
    (x, y), = batches(ds)
    assert x.shape == (6, 98, 40) and x.dtype == np.float32 and y.dtype == np.int32
    rows = manifest[manifest.split == "train"]
    np.testing.assert_array_equal(y, label_indices(rows, labels))
    first = fit_length(load_audio(rows.path.iloc[0]), 16000)
    np.testing.assert_allclose(x[0], logmel_tf(first, FeatureConfig()).numpy(), atol=1e-4)
    small = FeatureConfig(n_mels=20, hop_ms=20.0)
    (x2, _), = batches(make_dataset(manifest, "test", labels, small, clip_seconds=0.5, batch_size=8))
    assert x2.shape == (3, small.num_frames(8000), 20)


def test_make_dataset_shuffle_and_augmentation_are_seeded(small_dataset, tmp_path):
    manifest, noise = small_dataset
    labels = ["no", "yes", "up"]

    def make(seed, cache="memory"):
        return make_dataset(manifest, "train", labels, batch_size=6, augment=AugmentConfig(noises=(noise,)),
                            seed=seed, cache=cache)

    ds = make(0)
    epoch1, epoch2 = batches(ds), batches(ds)
    again = batches(make(0, cache="none"))
    np.testing.assert_array_equal(epoch1[0][0], again[0][0])
    np.testing.assert_array_equal(epoch1[0][1], again[0][1])
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])
    assert not np.array_equal(epoch1[0][0], batches(make(1))[0][0])
    assert sorted(epoch1[0][1]) == sorted(epoch2[0][1])


def test_make_dataset_errors_and_skipping(small_dataset, tmp_path, capsys):
    manifest, _ = small_dataset
    with pytest.raises(ValueError, match=r"up_\d+.wav: label='up' is not in label_names \['no', 'yes'\]"):
        make_dataset(manifest, "train", ["no", "yes"])
    with pytest.raises(ValueError, match="split='dev' is not one of"):
        make_dataset(manifest, "dev", ["no", "yes", "up"])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not a wave file at all")
    with_bad = pd.concat([manifest, pd.DataFrame([(str(broken), "yes", "s0", "train")], columns=manifest.columns)])
    with pytest.raises(AudioFileError, match=r"broken.wav: not a readable audio file"):
        make_dataset(with_bad, "train", ["no", "yes", "up"])
    ds = make_dataset(with_bad, "train", ["no", "yes", "up"], batch_size=16, skip_bad_files=True)
    assert batches(ds)[0][0].shape[0] == 6 and "broken.wav" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="FSDD recordings not available")
def test_make_dataset_on_real_recordings():
    manifest = read_fsdd(FSDD)
    manifest = manifest[manifest.path.isin(sorted(glob.glob(os.path.join(FSDD, "*_[0-1].wav"))))]
    labels = sorted(manifest.label.unique())
    x, y = batches(make_dataset(manifest, "test", labels, batch_size=64))[0]
    assert x.shape == (20, 98, 40) and set(y) == set(range(10))
    assert np.isfinite(x).all() and x.max() > np.log(FeatureConfig().log_floor) + 5


def test_speed_perturb_changes_tempo_and_keeps_length():
    from kws_quant.data import speed_perturb

    x = np.sin(2 * np.pi * 100 * np.arange(8000) / 8000).astype(np.float32)  # 100 Hz for 1 s
    fast = speed_perturb(x, 1.25)
    slow = speed_perturb(x, 0.8)
    assert fast.shape == slow.shape == x.shape and fast.dtype == np.float32
    # zero crossings scale with the speed factor (100 Hz → 125 Hz over the kept samples)
    crossings = lambda y: np.count_nonzero(np.diff(np.signbit(y[1000:7000])))
    assert abs(crossings(fast) / crossings(x) - 1.25) < 0.02 and abs(crossings(slow) / crossings(x) - 0.8) < 0.02
    np.testing.assert_array_equal(speed_perturb(x, 1.0), x)
