"""Fixtures shared by the tests.

Random data is seeded per test, from the test's id: a test sees the same data whether it runs alone, in a file, or
in the whole suite under ``pytest-xdist`` (a module-level generator would hand each test whatever the tests before
it left).
"""
import zlib

import numpy as np
import pytest


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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "litert_bitexact: compares our integer arithmetic with LiteRT's integer kernels bit for bit (both "
        "sides integer; holds for LiteRT's reference and optimized CPU kernels on x86-64; deselect with "
        "-m 'not litert_bitexact' on a platform whose kernels round differently)")
