"""The disk cache of decoded features/audio (kws_quant.data.disk_cache) behind make_dataset(cache="disk"): the same
batches as the in-memory cache, reused while files and settings are unchanged, rebuilt (never reused) otherwise."""
import json
import os

import numpy as np
import pytest

from kws_quant.data import AudioFileError, AugmentConfig, make_dataset
from kws_quant.data import disk_cache
from kws_quant.features import FeatureConfig

LABELS = ["no", "yes", "up"]


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def entries(root):
    return sorted(n for n in os.listdir(root) if not n.startswith("."))


def test_disk_cache_gives_the_memory_cache_batches_then_is_reused(small_dataset, tmp_path, capsys):
    """Same code path, stored and read back: the batches are equal bit for bit, in order when not shuffled and in the
    same seeded order when augmenting (the shuffle buffer and augmentation seeds do not depend on where elements
    are cached)."""
    manifest, noise = small_dataset
    root = str(tmp_path / "cache")
    plain = dict(batch_size=4, shuffle=False)
    memory = batches(make_dataset(manifest, "train", LABELS, **plain))
    disk = batches(make_dataset(manifest, "train", LABELS, cache="disk", cache_dir=root, **plain))
    assert "feature cache: building" in capsys.readouterr().out
    assert len(memory) == len(disk) == 2
    for (xm, ym), (xd, yd) in zip(memory, disk):
        np.testing.assert_array_equal(xm, xd)
        np.testing.assert_array_equal(ym, yd)
    again = make_dataset(manifest, "train", LABELS, cache="disk", cache_dir=root, **plain)
    assert "feature cache: reusing" in capsys.readouterr().out and len(entries(root)) == 1
    np.testing.assert_array_equal(batches(again)[0][0], memory[0][0])

    augmented = dict(batch_size=3, augment=AugmentConfig(noises=(noise,)), seed=3)
    mem_aug = make_dataset(manifest, "train", LABELS, **augmented)
    disk_aug = make_dataset(manifest, "train", LABELS, cache="disk", cache_dir=root, **augmented)
    assert len(entries(root)) == 2  # audio, not features: another key
    for epoch in range(2):  # reshuffled and re-augmented each epoch, alike
        for (xm, ym), (xd, yd) in zip(batches(mem_aug), batches(disk_aug)):
            np.testing.assert_array_equal(ym, yd)
            np.testing.assert_array_equal(xm, xd)


def test_other_settings_or_changed_files_are_rebuilt_never_reused(small_dataset, tmp_path, capsys):
    manifest, _ = small_dataset
    root = str(tmp_path / "cache")

    def make(**kw):
        return make_dataset(manifest, "test", LABELS, batch_size=8, cache="disk", cache_dir=root, **kw)

    first = batches(make())[0][0]
    batches(make(feature_cfg=FeatureConfig(n_mels=20)))
    batches(make(clip_seconds=0.5))
    assert len(entries(root)) == 3
    path = manifest[manifest.split == "test"].path.iloc[0]
    os.utime(path, ns=(0, 10**9))  # touched: another modification time
    changed = batches(make())[0][0]
    assert len(entries(root)) == 4 and "reusing" not in capsys.readouterr().out
    np.testing.assert_array_equal(changed, first)  # same audio, rebuilt all the same


def test_truncated_or_unfinished_cache_is_rebuilt_with_a_message(small_dataset, tmp_path, capsys):
    manifest, _ = small_dataset
    root = tmp_path / "cache"
    kw = dict(batch_size=8, cache="disk", cache_dir=str(root), shuffle=False)
    expected = batches(make_dataset(manifest, "validation", LABELS, **kw))[0][0]
    (key,) = entries(root)
    info = json.loads((root / key / "cache.json").read_text())
    shard = root / key / sorted(info["files"], key=len)[-1]  # a stored snapshot file
    shard.write_bytes(shard.read_bytes()[:-10])
    capsys.readouterr()
    np.testing.assert_array_equal(batches(make_dataset(manifest, "validation", LABELS, **kw))[0][0], expected)
    assert f"rebuilding {root / key}: {shard} has" in capsys.readouterr().err
    (root / key / "cache.json").unlink()  # as a killed build would leave it, had it not used a partial folder
    np.testing.assert_array_equal(batches(make_dataset(manifest, "validation", LABELS, **kw))[0][0], expected)
    assert "cache.json is unreadable" in capsys.readouterr().err
    # a killed build's partial folder (its process is gone) is removed by the next build of that key
    dead = root / f"{key}.partial-{os.uname().nodename}-999999999"
    dead.mkdir()
    (root / key / "cache.json").unlink()
    batches(make_dataset(manifest, "validation", LABELS, **kw))
    assert not dead.exists() and entries(root) == [key]


def test_bad_files_are_recorded_with_the_cache(small_dataset, tmp_path, capsys):
    manifest, _ = small_dataset
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    rows = manifest.copy()
    rows.loc[rows.index[0], "path"] = str(broken)
    kw = dict(batch_size=16, cache="disk", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(AudioFileError, match="broken.wav"):
        make_dataset(rows, "train", LABELS, **kw)
    (x, _), = batches(make_dataset(rows, "train", LABELS, skip_bad_files=True, **kw))
    assert len(x) == 5 and "broken.wav" in capsys.readouterr().err
    (x, _), = batches(make_dataset(rows, "train", LABELS, skip_bad_files=True, **kw))  # reused: the list is kept
    out = capsys.readouterr()
    assert len(x) == 5 and "reusing" in out.out and "broken.wav" in out.err
    with pytest.raises(AudioFileError, match="broken.wav"):  # and still refused without --skip_bad_files
        make_dataset(rows, "train", LABELS, **kw)


def test_modes_and_the_auto_threshold():
    assert disk_cache.resolve_mode(True, 10, 4) == "memory" and disk_cache.resolve_mode(False, 10, 4) == "none"
    assert disk_cache.resolve_mode("auto", 1000, 15_680) == "memory"  # 15 MiB of features
    assert disk_cache.resolve_mode("auto", 85_000, 64_000) == "disk"  # the full Speech Commands' training audio
    with pytest.raises(ValueError, match=r"cache='ram' is not one of \['auto', 'memory', 'disk', 'none'\]"):
        disk_cache.resolve_mode("ram", 1, 1)


def test_default_root_follows_kws_quant_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KWS_QUANT_CACHE", str(tmp_path))
    assert disk_cache.default_cache_root() == str(tmp_path)
    monkeypatch.delenv("KWS_QUANT_CACHE")
    assert disk_cache.default_cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "kws_quant")


def test_many_shards_keep_order_unshuffled_and_every_element_once_shuffled(small_dataset, tmp_path, monkeypatch):
    manifest, _ = small_dataset
    monkeypatch.setattr(disk_cache, "SHARD_ELEMENTS", 2)  # 3 shards for the 6 training clips
    kw = dict(batch_size=6, cache="disk", cache_dir=str(tmp_path / "cache"))
    (xm, ym), = batches(make_dataset(manifest, "train", LABELS, shuffle=False))
    (xd, yd), = batches(make_dataset(manifest, "train", LABELS, shuffle=False, **kw))
    (key,) = entries(tmp_path / "cache")
    assert json.loads((tmp_path / "cache" / key / "cache.json").read_text())["shards"] == 3
    np.testing.assert_array_equal(xd, xm)
    np.testing.assert_array_equal(yd, ym)
    shuffled = make_dataset(manifest, "train", LABELS, shuffle=True, seed=1, **kw)
    orders = []
    for _ in range(3):
        (xs, _), = batches(shuffled)
        order = [int(np.argmin([np.abs(x - ref).max() for ref in xm])) for x in xs]
        assert sorted(order) == list(range(6))
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # reshuffled each epoch
