"""Quantizer properties from METHODS §1-2 and the registry contract."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import tensorflow as tf

from kws_quant import quantizers as qz
from kws_quant.quantizers import LinearQuantizer, TanhQuantizer

RNG = np.random.default_rng(1234)


def _weights(shape=(64, 48), scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _dorefa_reference(w, bits, axis=None):
    th = np.tanh(w)
    t = th / np.abs(th).max(axis=axis, keepdims=axis is not None)
    n = np.round((2 ** bits - 1) * (t + 1) / 2)
    return (2 * n / (2 ** bits - 1) - 1).astype(np.float32)


# -- tanh ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 9))
def test_tanh_dorefa_matches_methods_formula_exactly(bits):
    w = _weights()
    q = qz.get(f"tanh(bits={bits})")
    out = q.fake_quant(tf.constant(w)).numpy()
    np.testing.assert_array_equal(out, _dorefa_reference(w, bits))
    assert len(np.unique(out)) <= 2 ** bits
    assert q.num_levels == 2 ** bits
    if bits == 1:
        assert set(np.unique(out)) == {-1.0, 1.0}


@pytest.mark.parametrize("bits", range(1, 9))
def test_tanh_dorefa_per_channel_matches_formula(bits):
    w = _weights((32, 6))
    out = qz.get(f"tanh(bits={bits}, per_channel=True)").fake_quant(tf.constant(w)).numpy()
    np.testing.assert_array_equal(out, _dorefa_reference(w, bits, axis=0))
    for c in range(w.shape[1]):
        assert len(np.unique(out[:, c])) <= 2 ** bits


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("per_channel", [False, True])
def test_tanh_symmetric_codes_fit_int8_and_count(bits, per_channel):
    w = _weights()
    q = TanhQuantizer(bits=bits, mode="symmetric", per_channel=per_channel, output_scale="max")
    codes = q.codes(w)
    qmax = 2 ** (bits - 1) - 1
    assert codes.codes.dtype == np.int8 and codes.signed
    assert codes.codes.min() >= -qmax and codes.codes.max() <= qmax
    columns = [codes.codes[:, c] for c in range(w.shape[1])] if per_channel else [codes.codes]
    assert all(len(np.unique(col)) <= 2 ** bits - 1 for col in columns)
    out = q.fake_quant(tf.constant(w)).numpy()
    np.testing.assert_allclose(codes.dequantize(), out, rtol=1e-6, atol=1e-7)
    # output scale 'max' keeps the layer's range: |w_q| <= max|W| (per channel), and the extreme is reached
    alpha = np.abs(w).max(axis=0) if per_channel else np.abs(w).max()
    assert np.all(np.abs(out) <= alpha * (1 + 1e-6))
    np.testing.assert_allclose(np.abs(out).max(axis=0 if per_channel else None), alpha, rtol=1e-6)


@pytest.mark.parametrize("spec", ["tanh(bits=3)", "tanh(bits=5, mode='symmetric', per_channel=True)",
                                  "tanh(bits=4, output_scale=0.25)", "linear(bits=6)",
                                  "linear(bits=4, per_channel=True)"])
def test_integer_codes_reimport_exactly(spec):
    """Codes → values → codes is the identity: exports never re-quantize quantized weights."""
    q = qz.get(spec)
    c = q.codes(_weights((40, 5)))
    back = np.round(c.dequantize() / c.scale + c.zero_point).astype(np.int64)
    np.testing.assert_array_equal(back, c.codes)


@pytest.mark.parametrize("spec", ["tanh(bits=8)", "tanh(bits=6, mode='symmetric', output_scale='max')"])
def test_tanh_is_not_idempotent(spec):
    """Q(Q(W)) != Q(W) once tanh's distortion exceeds half a grid step (fine grids), hence exports store codes."""
    w = tf.constant(_weights())
    q = qz.get(spec)
    once = q.fake_quant(w)
    assert not np.array_equal(q.fake_quant(once).numpy(), once.numpy())


def test_tanh_gradient_is_ste_with_tanh_derivative():
    w = tf.Variable(_weights((16, 8)))
    for spec, alpha in [("tanh(bits=4)", None), ("tanh(bits=4, mode='symmetric', output_scale='max')", "max")]:
        q = qz.get(spec)
        with tf.GradientTape() as tape:
            y = q.fake_quant(w)
        g = tape.gradient(y, w, output_gradients=tf.ones_like(w)).numpy()
        wn = w.numpy()
        a = np.abs(wn).max() if alpha == "max" else 1.0
        expected = a * (1 - np.tanh(wn) ** 2) / np.abs(np.tanh(wn)).max()
        np.testing.assert_allclose(g, expected, rtol=1e-5)


# -- linear -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(2, 9))
def test_linear_asymmetric_matches_tf_fake_quant_and_zero_is_exact(bits):
    x = (RNG.standard_normal(4000) * 2 + 1.5).astype(np.float32)  # range does not centre on 0
    q = qz.get(f"linear(bits={bits}, symmetric=False)")
    out = q.fake_quant(tf.constant(x)).numpy()
    ref = tf.quantization.fake_quant_with_min_max_vars(x, min(x.min(), 0), max(x.max(), 0), num_bits=bits)
    np.testing.assert_array_equal(out, ref.numpy())
    assert len(np.unique(out)) <= 2 ** bits
    # 0 is exactly representable: zero maps to zero, and the zero point is an integer code
    with_zero = np.concatenate([x, [0.0]]).astype(np.float32)
    assert q.fake_quant(tf.constant(with_zero)).numpy()[-1] == 0.0
    c = q.codes(with_zero)
    assert c.zero_point == np.round(c.zero_point) and 0 <= c.codes.min() and c.codes.max() <= 2 ** bits - 1
    np.testing.assert_allclose(c.dequantize(), q.fake_quant(tf.constant(with_zero)).numpy(), atol=1e-6)


def test_linear_asymmetric_positive_range_is_widened_to_contain_zero():
    x = np.linspace(2.0, 5.0, 101, dtype=np.float32)
    c = qz.get("linear(bits=4, symmetric=False)").codes(x)
    assert c.zero_point == 0  # range widened to [0, 5]
    np.testing.assert_allclose(c.scale, 5.0 / 15, rtol=1e-6)


@pytest.mark.parametrize("bits", range(2, 9))
def test_linear_symmetric_formula(bits):
    x = _weights((100, 4))
    q = qz.get(f"linear(bits={bits}, symmetric=True)")
    qmax = 2 ** (bits - 1) - 1
    s = np.abs(x).max() / qmax
    expected = (np.clip(np.round(x / s), -qmax, qmax) * s).astype(np.float32)
    np.testing.assert_allclose(q.fake_quant(tf.constant(x)).numpy(), expected, rtol=1e-6)
    assert len(np.unique(q.codes(x).codes)) <= 2 ** bits - 1
    assert q.fake_quant(tf.constant([0.0, 1.0])).numpy()[0] == 0.0


def test_linear_level_counts_by_mode_and_role():
    assert qz.get("linear(bits=4, symmetric=True)").num_levels == 15
    assert qz.get("linear(bits=4, symmetric=False)").num_levels == 16
    auto = qz.get("linear(bits=4)")  # symmetric for weights, asymmetric for activations: at most 2^b
    assert auto.num_levels == 16 and auto.levels_for("kernel") == 15 and auto.levels_for("output") == 16
    x = _weights((200, 4)) * 3
    assert len(np.unique(auto.codes(x).codes)) <= auto.levels_for(None)


def test_linear_per_channel_symmetric_has_one_scale_per_channel():
    x = _weights((50, 3)) * np.array([0.1, 1.0, 10.0], np.float32)
    c = qz.get("linear(bits=8, per_channel=True)").codes(x)
    np.testing.assert_allclose(c.scale, np.abs(x).max(axis=0) / 127, rtol=1e-6)
    assert np.all(np.abs(c.codes).max(axis=0) == 127)


def test_linear_gradient_is_masked_ste():
    """Gradient one inside the clip range, zero outside (EMA range narrower than the batch)."""
    from kws_quant.layers import QuantActivation

    layer = QuantActivation(quantizer="linear(bits=8, symmetric=False)")
    layer.build((None, 4))
    layer.quantizer_state("output")["min"].assign(-1.0)
    layer.quantizer_state("output")["max"].assign(1.0)
    layer.quantizer_state("output")["seen"].assign(1.0)
    x = tf.Variable([[-3.0, -0.5, 0.25, 2.0]])
    with tf.GradientTape() as tape:
        y = layer(x, training=False)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[0.0, 1.0, 1.0, 0.0]])
    for spec in ["linear(bits=4)", "linear(bits=4, per_channel=True)"]:  # weight ranges cover the tensor
        w = tf.Variable(_weights((8, 3)))
        with tf.GradientTape() as tape:
            y = qz.get(spec).fake_quant(w)
        np.testing.assert_array_equal(tape.gradient(y, w).numpy(), np.ones((8, 3), np.float32))


def test_linear_ema_ranges_move_only_in_training():
    from kws_quant.layers import QuantActivation

    layer = QuantActivation(quantizer="linear(bits=8, ema_decay=0.9)")
    x1 = tf.constant(RNG.uniform(-1, 2, (32, 4)).astype(np.float32))
    layer(x1, training=False)  # builds; inference never moves ranges
    st = layer.quantizer_state("output")
    assert float(st["seen"].numpy()) == 0.0 and float(st["max"].numpy()) == 0.0
    layer(x1, training=True)  # first training batch initialises the range to the batch's
    assert np.isclose(st["min"].numpy(), x1.numpy().min()) and np.isclose(st["max"].numpy(), x1.numpy().max())
    x2 = x1 * 3.0
    layer(x2, training=True)
    assert np.isclose(st["max"].numpy(), 0.9 * x1.numpy().max() + 0.1 * x2.numpy().max(), rtol=1e-6)
    frozen = (st["min"].numpy(), st["max"].numpy())
    layer(x2 * 10, training=False)
    assert (st["min"].numpy(), st["max"].numpy()) == frozen


# -- registry -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "tanh", "tanh(bits=4)", "tanh(bits=5, mode='symmetric', per_channel=True)", "tanh(bits=2, output_scale='max')",
    "linear(bits=8, symmetric=False)", "linear(bits=4, per_channel=True, range='ema', ema_decay=0.99, stage=1)",
    " Linear( bits = 6 ) ",
])
def test_registry_roundtrips(spec):
    q = qz.get(spec)
    assert qz.get(repr(q)) == q
    assert qz.deserialize(qz.serialize(q)) == q
    assert qz.get(qz.serialize(q)) == q
    assert qz.get(q) is q
    assert qz.get({"name": q.name, **q.get_config()}) == q
    assert isinstance(q.bits, int) and 1 <= q.bits <= 8


def test_registry_none_and_names():
    assert qz.get(None) is None and qz.serialize(None) is None
    assert {"tanh", "linear"} <= set(qz.registered())
    assert isinstance(qz.get("tanh"), TanhQuantizer) and isinstance(qz.get("LINEAR"), LinearQuantizer)


@pytest.mark.parametrize("spec, message", [
    ("tanh(bits=0)", "tanh: bits=0 is not allowed; allowed: integers 1..8"),
    ("tanh(bits=9)", "tanh: bits=9 is not allowed; allowed: integers 1..8"),
    ("tanh(bits=1, mode='symmetric')", "bits=1 is not allowed (mode='symmetric' needs bits >= 2"),
    ("tanh(bits=2.5)", "bits=2.5 is not allowed"),
    ("tanh(mode='uniform')", "mode='uniform' is not allowed; allowed: 'dorefa', 'symmetric'"),
    ("tanh(output_scale=-1)", "output_scale=-1 is not allowed; allowed: None, 'max' or a positive number"),
    ("linear(bits=1)", "linear: bits=1 is not allowed; allowed: integers 2..8"),
    ("linear(range='minmax')", "range='minmax' is not allowed; allowed: None, 'current', 'ema'"),
    ("linear(ema_decay=1.5)", "ema_decay=1.5 is not allowed"),
    ("tanh(stage=3)", "stage=3 is not allowed"),
    ("tanhh(bits=4)", "unknown quantizer 'tanhh'; registered: "),
    ("tanh(bit=4)", "unknown argument 'bit' for quantizer 'tanh'; allowed: bits, mode, per_channel"),
    ("tanh(4)", "has positional arguments; write them as key=value"),
    ("tanh(bits=__import__('os').getpid())", "the value of 'bits' is not a literal"),
    ("tanh(bits=", "cannot parse quantizer spec"),
    ("os.system('true')", "expected a name or name(key=value, ...)"),
    (42, "cannot interpret 42 (a int) as a quantizer"),
    ({"config": {}}, "has neither 'class_name' nor 'name'"),
])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError) as err:
        qz.get(spec)
    assert message in str(err.value)


def test_register_quantizer_extends_registry_and_rejects_duplicates():
    @qz.register_quantizer
    class SignQuantizer(qz.Quantizer):
        name = "test_sign"

        def __init__(self, bits=1, stage=None):
            super().__init__(bits, stage)

        @property
        def num_levels(self):
            return 2

        def fake_quant(self, x, state=None):
            return x + tf.stop_gradient(tf.where(x >= 0, 1.0, -1.0) - x)

    q = qz.get("test_sign")
    assert isinstance(q, SignQuantizer) and qz.get(repr(q)) == q
    with pytest.raises(ValueError, match="already registered"):
        @qz.register_quantizer(name="tanh")
        class Other(SignQuantizer):
            pass


# -- hostile specs: refused with a ValueError naming the argument, never evaluated ------------------------------
@pytest.mark.parametrize("spec, message", [
    ("tanh(bits=4, bits=5)", "argument 'bits' is given twice"),
    ("tanh(per_channel='no')", "per_channel='no' is not allowed; allowed: True or False"),
    ("tanh(output_scale=1e999)", "output_scale=inf is not a finite number"),
    ("tanh(bits={[1]: 2})", "the value of 'bits' is not a literal"),
    ("tanh(bits=" + "1" * 100_000 + ")", "longer than 2000"),
    ("tanh(bits=4)\x00", "cannot parse quantizer spec"),
    ("__import__('os').system('true')", "cannot parse quantizer spec"),
    ({"name": "tanh", "bits": [1, "a"]}, r"bits=\[1, .a.\] is not allowed: not a sequence of numbers"),
    ({"name": "tanh", "per_channel": 1}, "per_channel=1 is not allowed"),
])
def test_hostile_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        qz.get(spec)


_SPEC_TEXT = st.one_of(
    st.text(max_size=60),
    st.builds(lambda name, items: f"{name}({', '.join(f'{k}={v}' for k, v in items)})",
              st.sampled_from(["tanh", "linear", "Tanh", "nope", "__import__"]),
              st.lists(st.tuples(st.sampled_from(["bits", "mode", "per_channel", "output_scale", "symmetric", "range",
                                                  "ema_decay", "stage", "x"]),
                                 st.sampled_from(["4", "1", "0", "-3", "9", "'symmetric'", "'dorefa'", "'max'", "True",
                                                  "False", "None", "1e999", "0.5", "'ema'", "[1]", "{}", "(1,)",
                                                  "'no'", "open('x')"])), max_size=4)))


@settings(max_examples=300, deadline=None)
@given(_SPEC_TEXT)
def test_fuzzed_spec_strings_give_a_quantizer_or_a_value_error(spec):
    """Random and near-valid spec strings: a quantizer that round-trips through its repr, or a ValueError; never
    another exception, never code run."""
    try:
        q = qz.get(spec)
    except ValueError:
        return
    if q is not None:
        assert qz.get(repr(q)) == q
