"""Fixtures shared by the tests.

Random data is seeded per test, from the test's id: a test sees the same data whether it runs alone, in a file, or
in the whole suite under ``pytest-xdist`` (a module-level generator would hand each test whatever the tests before
it left).
"""
import zlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf


def _seed(request) -> int:
    return zlib.crc32(request.node.nodeid.encode("utf-8"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy generator seeded from the test's id."""
    return np.random.default_rng(_seed(request))


@pytest.fixture(autouse=True)
def _reseed_module_rng(request):
    """Modules that keep a module-level ``RNG`` get it re-created, seeded from the test's id, before each test."""
    module = getattr(request, "module", None)
    if module is not None and isinstance(getattr(module, "RNG", None), np.random.Generator):
        module.RNG = np.random.default_rng(_seed(request))
    yield


@pytest.fixture
def small_dataset(tmp_path):
    """``(manifest, noise path)``: 12 tone clips of 0.5-1.4 s (labels yes/no/up; 16 kHz mono, 44.1 kHz stereo and
    8 kHz in turn), 4 speakers (two train, one validation, one test), and a 1 s noise file at 24 kHz."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(12):
        label = ["yes", "no", "up"][i % 3]
        rate, channels = [(16000, 1), (44100, 2), (8000, 1)][i % 3]
        t = np.arange(int(float(rng.uniform(0.5, 1.4)) * rate)) / rate
        wave = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)).astype(np.float32)
        path = str(tmp_path / f"{label}_{i}.wav")
        sf.write(path, wave if channels == 1 else np.stack([wave] * channels, axis=1), rate, subtype="PCM_16")
        rows.append((path, label, f"s{i % 4}", "train" if i % 4 < 2 else ["validation", "test"][i % 4 - 2]))
    noise = str(tmp_path / "noise.wav")
    sf.write(noise, np.random.default_rng(1).uniform(-.2, .2, 24000), 24000, subtype="PCM_16")
    return pd.DataFrame(rows, columns=["path", "label", "speaker", "split"]), noise


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or runs a command for over ~10 s (-m 'not slow': the "
                            "quick part of the suite, a few minutes)")
    config.addinivalue_line("markers", "subprocess: runs a command in a fresh Python process (the command line as a "
                            "user types it, a kill and resume, a fresh-process reload)")
    config.addinivalue_line(
        "markers", "litert_bitexact: compares our integer arithmetic with LiteRT's integer kernels bit for bit (both "
        "sides integer; holds for LiteRT's reference and optimized CPU kernels on x86-64; deselect with "
        "-m 'not litert_bitexact' on a platform whose kernels round differently)")


@pytest.fixture
def reload_keras(tmp_path):
    """``reload_keras(model, x) -> loaded``: save ``model`` as a ``.keras`` file under ``tmp_path``, load it back in
    this process and check it computes the same outputs on ``x`` (the same code path on one machine: exact)."""
    import keras

    def reload(model, x, name="model.keras"):
        path = tmp_path / name
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
        return loaded

    return reload
