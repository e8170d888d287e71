"""A split export's ``front_end.json`` (kws_quant.export.front_end.load_front_end) is checked field by field before
use: every hostile file is a ValueError naming the file and the field, never another exception or a front end that
computes something else."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kws_quant.export.front_end import FORMAT, FrontEnd, load_front_end


def valid() -> dict:
    """What a split int8 export writes for a [8, 3] window: per-mel affine, pooling by 2, the input grid."""
    return FrontEnd([{"op": "affine", "layer": "bn_in", "gain": [0.5, 1.0, 2.0], "offset": [0.0, -1.0, 0.25]},
                     {"op": "average_pool", "layer": "pool", "size": 2}], (8, 3), (4, 3), 0.05, -3,
                    False).to_dict()


def write(tmp_path, data, raw=None):
    path = tmp_path / "core.front_end.json"
    path.write_bytes(raw if raw is not None else json.dumps(data).encode())
    return path


def test_a_valid_file_reads_back(tmp_path):
    front = load_front_end(write(tmp_path, valid()))
    assert front == FrontEnd.from_dict(valid()) and front.output_shape == (4, 3)
    assert front.apply(np.ones((1, 8, 3), np.float32)).shape == (1, 4, 3)
    float_export = {**valid(), "scale": None, "zero_point": None}
    assert load_front_end(write(tmp_path, float_export)).scale is None
    features = {"sample_rate": 8000, "n_mels": 3, "win_ms": 32.0, "hop_ms": 16.0, "n_fft": 256}
    assert load_front_end(write(tmp_path, {**valid(), "features": features})).features == features


def _with(path, value):
    """valid() with the field at ``path`` (a tuple of keys / indices) set to ``value`` (``DELETE``: removed)."""
    d = valid()
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


DELETE = object()

HOSTILE = [  # (field path, value, what the message says)
    (("steps",), DELETE, "field 'steps' is missing"),
    (("input_shape",), DELETE, "field 'input_shape' is missing"),
    (("sample_rate",), 16000, "field 'sample_rate' is not part of kws_quant.front_end/1"),
    (("format",), "kws_quant.front_end/2", "field 'format' is 'kws_quant.front_end/2'"),
    (("input_shape",), "8x3", "field 'input_shape' is '8x3'; expected a non-empty list of positive integers"),
    (("input_shape",), [8.5, 3], r"field 'input_shape' is \[8.5, 3\]"),
    (("input_shape",), [True, 3], r"field 'input_shape' is \[True, 3\]"),
    (("input_shape",), [0, 3], r"field 'input_shape' is \[0, 3\]"),
    (("output_shape",), [8, 3], r"field 'output_shape' is \[8, 3\]; expected \[4, 3\] \(input_shape"),
    (("steps",), {"op": "affine"}, "field 'steps' is .*; expected a list"),
    (("steps", 0), "affine", r"steps\[0\] is 'affine'; expected an object"),
    (("steps", 0, "op"), "fft", r"steps\[0\] field 'op' is 'fft'"),
    (("steps", 0, "bias"), [1, 2, 3], r"steps\[0\] \(affine\) field 'bias' is not part of the step"),
    (("steps", 0, "offset"), DELETE, r"steps\[0\] \(affine\) field 'offset' is missing"),
    (("steps", 0, "layer"), 5, r"field 'steps\[0\].layer' is 5"),
    (("steps", 0, "gain"), [0.5, float("nan"), 2.0], r"field 'steps\[0\].gain' is \[0.5, nan, 2.0\]; expected a "
                                                      "list of 3 finite numbers"),
    (("steps", 0, "gain"), [0.5, float("inf"), 2.0], r"field 'steps\[0\].gain' is \[0.5, inf, 2.0\]"),
    (("steps", 0, "gain"), [2.0], r"field 'steps\[0\].gain' is \[2.0\]; expected a list of 3"),  # was broadcast
    (("steps", 0, "offset"), ["0", 1, 2], r"field 'steps\[0\].offset' is \['0', 1, 2\]"),
    (("steps", 0, "offset"), [True, 1, 2], r"field 'steps\[0\].offset' is \[True, 1, 2\]"),
    (("steps", 1, "size"), 0, r"steps\[1\] \(average_pool\) field 'size' is 0"),
    (("steps", 1, "size"), 2.0, r"steps\[1\] \(average_pool\) field 'size' is 2.0"),
    (("steps", 1, "size"), 9, r"steps\[1\] \(average_pool\) field 'size' is 9; expected a positive integer <= the frames in \(8\)"),
    (("scale",), float("nan"), "field 'scale' is nan; expected a finite number > 0"),
    (("scale",), 1e999, "field 'scale' is inf"),
    (("scale",), -0.05, "field 'scale' is -0.05"),
    (("scale",), "0.05", "field 'scale' is '0.05'"),
    (("scale",), None, "fields 'scale' and 'zero_point' are None and -3; expected both null"),
    (("zero_point",), 300, r"field 'zero_point' is 300; expected an integer in \[-128, 127\]"),
    (("zero_point",), -3.5, "field 'zero_point' is -3.5"),
    (("narrow_range",), "no", "field 'narrow_range' is 'no'; expected true or false"),  # was: True
    (("features",), "16k", "field 'features' is '16k'; expected an object of log-mel settings"),
    (("features",), {"sample_rate": 16000, "hop": 10}, "field 'features' is not a FeatureConfig: .*'hop'"),
    (("features",), {"n_mels": 40}, r"field 'features.n_mels' is 40; expected 3, the channels of input_shape"),
    (("features",), {"n_mels": 3, "win_ms": 64.0}, "field 'features' is not a FeatureConfig: window of 1024"),
]


@pytest.mark.parametrize("path, value, message", HOSTILE, ids=[f"{'.'.join(map(str, p))}="
                                                               f"{'deleted' if v is DELETE else repr(v)}"[:40]
                                                               for p, v, _ in HOSTILE])
def test_hostile_front_end_files_are_refused_naming_the_field(tmp_path, path, value, message):
    file = write(tmp_path, _with(path, value))
    with pytest.raises(ValueError, match=f"^{file}: {message}"):
        load_front_end(file)


@pytest.mark.parametrize("raw, message", [
    (b'{"format": "kws_quant.front_end/1", "steps": [', "not valid JSON"),
    (b"\xff\xfe\x00\x01garbage", "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b"null", "must be a JSON object"),
])
def test_unreadable_front_end_files_are_refused_naming_the_file(tmp_path, raw, message):
    file = write(tmp_path, None, raw)
    with pytest.raises(ValueError, match=f"^{file}: {message}"):
        load_front_end(file)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSON, st.sampled_from([("format",), ("steps",), ("input_shape",), ("output_shape",), ("scale",),
                              ("zero_point",), ("narrow_range",), ("steps", 0), ("steps", 0, "gain"),
                              ("steps", 0, "offset"), ("steps", 1, "size"), ("steps", 1, "op"), ("input_shape", 1)]))
def test_fuzzed_front_end_fields_give_value_error_or_a_working_front_end(value, path):
    """Any JSON value (NaN and infinities included) in any field: a ValueError, or a front end whose apply()
    gives finite values of its declared shape."""
    try:
        front = FrontEnd.from_dict(json.loads(json.dumps(_with(path, value))), where="fuzz.json")
    except ValueError as e:
        assert str(e).startswith("fuzz.json: ")
        return
    out = front.apply(np.ones((2, *front.input_shape), np.float32))
    assert out.shape == (2, *front.output_shape) and np.isfinite(out).all()


def test_format_constant():
    assert FORMAT == "kws_quant.front_end/1"
