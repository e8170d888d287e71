"""RNN-T loss (asr_ext.rnnt_loss, METHODS §9): brute-force equality, finite-difference gradient, stability,
mixed precision, input validation and the Keras Loss."""
from __future__ import annotations

import functools
import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_ext.rnnt_loss import RNNTLoss, rnnt_loss, rnnt_targets


# -- float64 numpy references ---------------------------------------------------------------------------------
def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def brute_force_nll(logits, labels, blank):
    """-log Σ over every monotone alignment of one utterance. logits [T, U+1, V] (exactly its own T, U)."""
    lp = _log_softmax(np.asarray(logits, np.float64))
    t_len, u_len = lp.shape[0], len(labels)
    scores = []
    for emit_steps in itertools.combinations(range(t_len - 1 + u_len), u_len):  # which moves are label moves
        t = u = 0
        score = 0.0
        for step in range(t_len - 1 + u_len):
            if step in emit_steps:
                score += lp[t, u, labels[u]]
                u += 1
            else:
                score += lp[t, u, blank]
                t += 1
        scores.append(score + lp[t_len - 1, u_len, blank])
    return -np.logaddexp.reduce(scores)


def _logaddexp(a, b):
    hi, lo = max(a, b), min(a, b)
    return hi if hi == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _lattice_tables(logits, labels, blank):
    """float64 lp [T, U+1, V], α [T, U+1], β [T, U+1] by plain loops over t and u (METHODS §9)."""
    lp = _log_softmax(np.asarray(logits, np.float64))
    t_len, u_len = lp.shape[0], len(labels)
    blank_lp, emit_lp = lp[:, :, blank].tolist(), lp[:, np.arange(u_len), labels].tolist()  # [T][U+1], [T][U]
    alpha = [[-math.inf] * (u_len + 1) for _ in range(t_len)]
    beta = [[-math.inf] * (u_len + 1) for _ in range(t_len)]
    for t in range(t_len):
        for u in range(u_len + 1):
            stay = 0.0 if t == 0 and u == 0 else (alpha[t - 1][u] + blank_lp[t - 1][u] if t else -math.inf)
            move = alpha[t][u - 1] + emit_lp[t][u - 1] if u else -math.inf
            alpha[t][u] = _logaddexp(stay, move)
    for t in reversed(range(t_len)):
        for u in reversed(range(u_len + 1)):
            stay = blank_lp[t][u] + (beta[t + 1][u] if t + 1 < t_len else (0.0 if u == u_len else -math.inf))
            move = emit_lp[t][u] + beta[t][u + 1] if u < u_len else -math.inf
            beta[t][u] = _logaddexp(stay, move)
    return lp, np.array(alpha), np.array(beta)


def alpha_nll(logits, labels, blank):
    """-log P = -(α(T-1, U) + lp(T-1, U, blank)), float64, one utterance."""
    lp, alpha, _ = _lattice_tables(logits, labels, blank)
    return -(alpha[-1, -1] + lp[-1, -1, blank])


def reference_grad(logits, labels, blank):
    """d(-log P)/dlogits [T, U+1, V], float64, from α, β and the softmax Jacobian."""
    lp, alpha, beta = _lattice_tables(logits, labels, blank)
    u_len, log_p = len(labels), beta[0, 0]
    beta_next_t = np.concatenate([beta[1:], np.where(np.arange(u_len + 1) == u_len, 0.0, -np.inf)[None]], 0)
    occ_blank = np.exp(alpha + lp[:, :, blank] + beta_next_t - log_p)
    occ_emit = np.zeros_like(occ_blank)
    occ_emit[:, :-1] = np.exp(alpha[:, :-1] + lp[:, np.arange(u_len), labels] + beta[:, 1:] - log_p)
    grad = np.exp(lp) * (occ_blank + occ_emit)[..., None]
    grad[:, :, blank] -= occ_blank
    grad[:, np.arange(u_len), labels] -= occ_emit[:, :-1]
    return grad


def random_batch(rng, t_lens, u_lens, vocab, blank=0):
    """Batch padded to the longest T and U, with junk (large random values, any ids) in every padding position."""
    t_max, u_max = max(t_lens), max(u_lens)
    logits = rng.normal(size=(len(t_lens), t_max, u_max + 1, vocab)) * 2.0
    labels = rng.integers(0, vocab, size=(len(t_lens), u_max))
    for b, (t, u) in enumerate(zip(t_lens, u_lens)):
        logits[b, t:] = rng.normal(size=logits[b, t:].shape) * 50.0
        logits[b, :, u + 1:] = rng.normal(size=logits[b, :, u + 1:].shape) * 50.0
        labels[b, :u] = rng.choice([k for k in range(vocab) if k != blank], size=u)
        labels[b, u:] = rng.integers(-5, vocab + 5, size=u_max - u)
    return logits, labels.astype(np.int32), np.array(t_lens, np.int32), np.array(u_lens, np.int32)


def loss_and_grad(logits, labels, t_lens, u_lens, blank=0, weights=None, dtype=tf.float32):
    x = tf.constant(logits, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = rnnt_loss(x, labels, t_lens, u_lens, blank=blank)
        total = tf.reduce_sum(loss * (1.0 if weights is None else tf.constant(weights, tf.float32)))
    return loss.numpy(), tape.gradient(total, x)


# -- correctness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,blank", [(0, 0), (1, 0), (2, 4)])
def test_matches_brute_force_sum_over_alignments(seed, blank):
    rng = np.random.default_rng(seed)
    t_lens, u_lens = [4, 1, 3, 2, 4], [3, 2, 0, 4, 1]
    logits, labels, tl, ul = random_batch(rng, t_lens, u_lens, vocab=5, blank=blank)
    loss, grad = loss_and_grad(logits, labels, tl, ul, blank=blank)
    ref = [brute_force_nll(logits[b, :t, :u + 1], labels[b, :u], blank) for b, (t, u) in enumerate(zip(tl, ul))]
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    # Padding gets exactly zero gradient, and gradients of each node sum to 0 over the vocabulary (softmax).
    grad = grad.numpy()
    for b, (t, u) in enumerate(zip(tl, ul)):
        assert not grad[b, t:].any() and not grad[b, :, u + 1:].any()
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)


def test_padding_does_not_change_loss_even_if_non_finite():
    rng = np.random.default_rng(3)
    logits, labels, tl, ul = random_batch(rng, [3, 2], [2, 1], vocab=4)
    alone = [rnnt_loss(logits[b:b + 1, :t, :u + 1], labels[b:b + 1, :u], [t], [u]).numpy()[0]
             for b, (t, u) in enumerate(zip(tl, ul))]
    wider = np.pad(logits, [(0, 0), (0, 3), (0, 2), (0, 0)], constant_values=1e4)
    wider[1, 2:] = np.nan  # frames past T_1 = 2
    wider[0, :, 3:] = np.inf  # label positions past U_0 = 2
    loss, grad = loss_and_grad(wider, np.pad(labels, [(0, 0), (0, 2)], constant_values=3), tl, ul)
    np.testing.assert_allclose(loss, alone, rtol=1e-6)
    grad = grad.numpy()
    assert np.isfinite(grad).all() and not grad[1, 2:].any() and not grad[0, :, 3:].any()


def test_gradient_matches_central_finite_differences():
    rng = np.random.default_rng(4)
    logits, labels, tl, ul = random_batch(rng, [3, 2, 1], [2, 1, 1], vocab=4, blank=1)
    weights = np.array([0.7, -1.3, 2.0])
    _, grad = loss_and_grad(logits, labels, tl, ul, blank=1, weights=weights)

    def objective(x):
        return sum(w * brute_force_nll(x[b, :t, :u + 1], labels[b, :u], 1)
                   for b, (w, t, u) in enumerate(zip(weights, tl, ul)))

    eps, fd = 1e-5, np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        hi, lo = logits.copy(), logits.copy()
        hi[idx] += eps
        lo[idx] -= eps
        fd[idx] = (objective(hi) - objective(lo)) / (2 * eps)
    np.testing.assert_allclose(grad.numpy(), fd, atol=2e-5)


def test_reductions_and_graph_mode_agree():
    rng = np.random.default_rng(5)
    logits, labels, tl, ul = random_batch(rng, [4, 2], [3, 1], vocab=5)
    per_utt = rnnt_loss(logits, labels, tl, ul).numpy()
    assert rnnt_loss(logits, labels, tl, ul, reduction="sum").numpy() == pytest.approx(per_utt.sum(), rel=1e-6)
    assert rnnt_loss(logits, labels, tl, ul, reduction="mean").numpy() == pytest.approx(per_utt.mean(), rel=1e-6)
    graph = tf.function(lambda x: rnnt_loss(x, labels, tl, ul))
    np.testing.assert_allclose(graph(tf.constant(logits)).numpy(), per_utt, rtol=1e-6)


# -- stability and precision ----------------------------------------------------------------------------------
def test_long_sequence_is_finite_and_exact():
    rng = np.random.default_rng(6)
    t_len, u_len, vocab = 1000, 100, 8
    logits = rng.normal(size=(1, t_len, u_len + 1, vocab)) * 4.0  # log-probs down to about -40 per step
    labels = rng.integers(1, vocab, size=(1, u_len)).astype(np.int32)
    loss, grad = loss_and_grad(logits, labels, [t_len], [u_len])
    grad = grad.numpy()
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss[0], alpha_nll(logits[0], labels[0], 0), rtol=1e-6)  # ~3e3 nats
    ref = reference_grad(logits[0], labels[0], 0)
    np.testing.assert_allclose(grad[0], ref, atol=1e-4)  # float32 rounding over ~1100 diagonals: ~4e-5
    # The float64 reference itself against central differences, at its largest entry.
    idx = np.unravel_index(np.abs(ref).argmax(), ref.shape)
    hi, lo = logits[0].copy(), logits[0].copy()
    hi[idx] += 1e-4
    lo[idx] -= 1e-4
    fd = (alpha_nll(hi, labels[0], 0) - alpha_nll(lo, labels[0], 0)) / 2e-4
    assert ref[idx] == pytest.approx(fd, abs=1e-6)


@pytest.mark.parametrize("dtype,atol", [(tf.float16, 2e-3), (tf.bfloat16, 1.6e-2)])
def test_low_precision_logits_match_float32(dtype, atol):
    rng = np.random.default_rng(7)
    logits, labels, tl, ul = random_batch(rng, [4, 3], [3, 2], vocab=6)
    logits = np.clip(logits, -8, 8)
    loss32, grad32 = loss_and_grad(logits, labels, tl, ul)
    loss_lo, grad_lo = loss_and_grad(logits, labels, tl, ul, dtype=dtype)
    assert grad_lo.dtype == dtype
    np.testing.assert_allclose(loss_lo, loss32, rtol=0, atol=atol * 20)  # input rounding × ~10 steps
    np.testing.assert_allclose(tf.cast(grad_lo, tf.float32).numpy(), grad32.numpy(), atol=atol)
    # Computed in float32: identical to float32 on the same (rounded) values.
    rounded = tf.cast(tf.cast(logits, dtype), tf.float32).numpy()
    np.testing.assert_allclose(loss_lo, rnnt_loss(rounded, labels, tl, ul).numpy(), rtol=1e-6)


# -- input validation -----------------------------------------------------------------------------------------
def _valid_inputs():
    """B=2, T=5, U=3, V=6."""
    logits = np.zeros((2, 5, 4, 6), np.float32)
    return logits, np.array([[1, 2, 3], [4, 5, -1]], np.int32), np.array([5, 4]), np.array([3, 2])


@pytest.mark.parametrize("change,message", [
    (dict(labels=np.array([[1, 0, 3], [4, 5, -1]])), r"labels\[0, 1\] = 0 equals the blank id"),
    (dict(labels=np.array([[1, 2, 3], [4, 6, -1]])), r"labels\[1, 1\] = 6 is outside \[0, V\) with V = 6"),
    (dict(logit_lengths=np.array([5, -1])), r"logit_lengths\[1\] = -1 is not allowed; must be >= 1"),
    (dict(logit_lengths=np.array([0, 4])), r"logit_lengths\[0\] = 0 is not allowed; must be >= 1"),
    (dict(label_lengths=np.array([-2, 2])), r"label_lengths\[0\] = -2 is not allowed; must be >= 0"),
    (dict(logit_lengths=np.array([5, 6])), r"logit_lengths\[1\] = 6 exceeds logits.shape\[1\] \(T\) = 5"),
    (dict(label_lengths=np.array([4, 2])), r"label_lengths\[0\] = 4 exceeds labels.shape\[1\] \(U\) = 3"),
    (dict(logits=np.zeros((2, 5, 5, 6), np.float32)),
     r"logits.shape\[2\] \(U\+1\) must equal labels.shape\[1\] \+ 1 = 4; got 5"),
    (dict(logits=np.zeros((2, 5, 6), np.float32)), r"logits must have rank 4 \[B, T, U\+1, V\]; got rank 3"),
    (dict(labels=np.array([1, 2, 3])), r"labels must have rank 2 \[B, U\]; got rank 1"),
    (dict(logit_lengths=np.array([[5, 4]])), r"logit_lengths must have rank 1 \[B\]; got rank 2"),
    (dict(label_lengths=np.array([3, 2, 1])), r"batch sizes differ: .*'label_lengths': 3"),
    (dict(labels=np.array([[1.0, 2, 3], [4, 5, 0]])), r"labels must be an integer tensor; got dtype float64"),
    (dict(blank=6), r"blank=6 is not allowed; allowed: an int in \[0, V\) with V = 6"),
    (dict(reduction="avg"), r"reduction='avg' is not allowed"),
])
def test_bad_input_raises_value_error(change, message):
    logits, labels, tl, ul = _valid_inputs()
    kwargs = {**dict(logits=logits, labels=labels, logit_lengths=tl, label_lengths=ul), **change}
    with pytest.raises(ValueError, match=message):
        rnnt_loss(**kwargs)


def test_blank_in_label_padding_is_allowed():
    logits, _, tl, ul = _valid_inputs()
    assert np.isfinite(rnnt_loss(logits, np.array([[1, 2, 3], [4, 5, 0]]), tl, ul).numpy()).all()


def test_graph_mode_checks():
    logits, labels, tl, ul = _valid_inputs()
    with pytest.raises(ValueError, match=r"U\+1\) must equal labels.shape\[1\] \+ 1"):  # static: at trace time
        tf.function(lambda x: rnnt_loss(x, labels, tl, ul))(logits[:, :, :3])
    run = tf.function(lambda y, t: rnnt_loss(logits, y, t, ul))
    with pytest.raises(tf.errors.InvalidArgumentError, match="logit_lengths exceeds logits.shape"):
        run(tf.constant(labels), tf.constant([5, 6]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels contain the blank id"):
        run(tf.constant([[1, 0, 3], [4, 5, -1]]), tf.constant(tl))


def test_empty_batch_is_a_value_error():
    logits, labels, tl, ul = (x[:0] for x in _valid_inputs())
    for call in (lambda: rnnt_loss(logits, labels, tl, ul),  # eager
                 lambda: tf.function(lambda x: rnnt_loss(x, labels, tl, ul, reduction="mean"))(logits),  # traced
                 lambda: RNNTLoss()(rnnt_targets(labels, tl, ul), logits)):
        with pytest.raises(ValueError, match=r"rnnt_loss: the batch is empty \(B = 0"):
            call()
    # B known only at run time: an assert in a graph (under XLA, an empty loss: documented)
    spec = [tf.TensorSpec([None, 5, 4, 6]), tf.TensorSpec([None, 3], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32)]
    with pytest.raises(tf.errors.InvalidArgumentError, match="the batch is empty"):
        tf.function(rnnt_loss, input_signature=spec)(logits, labels, tl.astype(np.int32), ul.astype(np.int32))


# A non-finite logit at a node the loss reads (t < T_b, u <= U_b, any of the V entries); batch of _valid_inputs:
# T = (5, 4), U = (3, 2), V = 6, blank 0.
NODES = {"blank entry": (0, 2, 1, 0), "label entry": (0, 2, 1, 2), "unused entry": (0, 2, 1, 5),
         "first node": (0, 0, 0, 3), "last node of a shorter utterance": (1, 3, 2, 1)}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("node", list(NODES))
def test_non_finite_logit_in_the_lattice_gives_nan_loss_and_gradient(node, value):
    """It used to give a finite loss (the NaN vanished in the α loop's max) with a NaN gradient."""
    logits, labels, tl, ul = _valid_inputs()
    logits = np.random.default_rng(10).normal(size=logits.shape).astype(np.float32)
    clean_loss, clean_grad = loss_and_grad(logits, labels, tl, ul)
    bad = logits.copy()
    bad[NODES[node]] = value
    b, other = NODES[node][0], 1 - NODES[node][0]
    loss, grad = loss_and_grad(bad, labels, tl, ul)
    grad = grad.numpy()
    assert np.isnan(loss[b]) and np.isnan(grad[b]).all()
    # the other utterance of the batch is untouched (same code path: equal up to float32 rounding)
    assert loss[other] == pytest.approx(clean_loss[other], rel=1e-6)
    np.testing.assert_allclose(grad[other], clean_grad.numpy()[other], atol=1e-6)
    assert np.isnan(rnnt_loss(bad, labels, tl, ul, reduction="mean").numpy())


@functools.lru_cache(maxsize=None)
def _xla_loss_and_grad():
    """One XLA-compiled (loss, gradient) function for the tests below: compiled once per input shape."""
    spec = [tf.TensorSpec([None, None, None, 6]), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(jit_compile=True, input_signature=spec)
    def run(x, y, t, u):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = rnnt_loss(x, y, t, u)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, x)

    return run


@pytest.mark.parametrize("change,b", [
    (dict(labels=[[1, 0, 3], [4, 5, -1]]), 0),  # a blank label within label_lengths
    (dict(labels=[[1, 2, 3], [4, 6, -1]]), 1),  # a label outside [0, V)
    (dict(labels=[[1, -3, 3], [4, 5, -1]]), 0),
    (dict(logit_lengths=[5, 6]), 1),  # beyond T
    (dict(logit_lengths=[0, 4]), 0),
    (dict(label_lengths=[4, 2]), 0),  # beyond U
    (dict(label_lengths=[3, -1]), 1),
    (dict(nan_at=(0, 2, 1, 3)), 0),  # a non-finite logit at a node of the lattice
])
def test_value_checks_under_xla_give_a_nan_loss_per_utterance(change, b):
    """XLA drops asserts: every value check that raises eagerly is still made there, as a NaN loss and gradient
    for the utterance that fails it (the other keeps its loss). This used to return numbers."""
    logits, labels, tl, ul = _valid_inputs()
    logits = np.random.default_rng(11).normal(size=logits.shape).astype(np.float32)
    eager = rnnt_loss(logits, labels, tl, ul).numpy()
    bad = dict(logits=logits.copy(), labels=labels, logit_lengths=tl, label_lengths=ul)
    if "nan_at" in change:
        bad["logits"][change["nan_at"]] = np.nan
    else:
        bad.update(change)
        with pytest.raises(ValueError, match=next(iter(change))):  # eagerly: an error naming the argument
            rnnt_loss(**bad)
    loss, grad = (t.numpy() for t in _xla_loss_and_grad()(
        tf.constant(bad["logits"]), *(tf.constant(bad[k], tf.int32) for k in ("labels", "logit_lengths",
                                                                             "label_lengths"))))
    assert np.isnan(loss[b]) and np.isnan(grad[b]).all()
    # the other utterance: XLA and eager are different compilations, equal up to float32 rounding
    assert loss[1 - b] == pytest.approx(eager[1 - b], rel=1e-5)
    assert np.isfinite(grad[1 - b]).all()


def test_valid_input_under_xla_matches_eager():
    rng = np.random.default_rng(12)
    logits, labels, tl, ul = random_batch(rng, [4, 2, 3], [3, 1, 0], vocab=6)
    loss, grad = (t.numpy() for t in _xla_loss_and_grad()(tf.constant(logits, tf.float32), labels, tl, ul))
    eager_loss, eager_grad = loss_and_grad(logits, labels, tl, ul)
    np.testing.assert_allclose(loss, eager_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, eager_grad.numpy(), atol=1e-5)


# -- Keras ----------------------------------------------------------------------------------------------------
class ToyJoint(keras.Model):
    """enc [B, T, D], pred [B, U+1, D] -> logits [B, T, U+1, V] = Dense(tanh(Dense(enc) + Dense(pred)))."""

    def __init__(self, vocab, hidden=16):
        super().__init__()
        self.enc, self.pred = keras.layers.Dense(hidden), keras.layers.Dense(hidden)
        self.out = keras.layers.Dense(vocab)

    def call(self, inputs):
        enc, pred = inputs
        return self.out(keras.ops.tanh(self.enc(enc)[:, :, None, :] + self.pred(pred)[:, None, :, :]))


def _toy_data(rng):
    """Inputs (enc [4, 6, 4], pred [4, 4, 4]) and packed targets for V = 5."""
    enc = rng.normal(size=(4, 6, 4)).astype(np.float32)
    pred = rng.normal(size=(4, 4, 4)).astype(np.float32)
    labels = rng.integers(1, 5, size=(4, 3))
    return (enc, pred), rnnt_targets(labels, [6, 5, 3, 6], [3, 1, 2, 0]).numpy()


def test_keras_loss_packing_and_serialization():
    rng = np.random.default_rng(8)
    logits, labels, tl, ul = random_batch(rng, [4, 2, 3], [3, 1, 0], vocab=5)
    y_true = rnnt_targets(labels, tl, ul)
    np.testing.assert_array_equal(y_true.numpy()[:, 0], tl)
    np.testing.assert_array_equal(y_true.numpy()[1, 2:], [-1, -1])
    loss = RNNTLoss()
    expected = rnnt_loss(logits, labels, tl, ul).numpy().mean()
    assert float(loss(y_true, logits)) == pytest.approx(expected, rel=1e-6)
    assert keras.saving.get_registered_name(RNNTLoss) == "asr_ext>RNNTLoss"
    clone = keras.losses.deserialize(keras.losses.serialize(RNNTLoss(blank=2, reduction="sum", name="t")))
    assert isinstance(clone, RNNTLoss) and (clone.blank, clone.reduction, clone.name) == (2, "sum", "t")


def test_keras_loss_trains_toy_joint_with_compile_and_gradient_tape():
    inputs, y_true = _toy_data(np.random.default_rng(9))
    keras.utils.set_random_seed(0)
    model = ToyJoint(vocab=5)
    # jit_compile=True: what Keras picks by default on a GPU; the loss must also work inside an XLA train step.
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=RNNTLoss(blank=0), jit_compile=True)
    history = model.fit(inputs, y_true, batch_size=4, epochs=15, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < 0.7 * history[0]

    loss_fn, optimizer = RNNTLoss(), keras.optimizers.SGD(0.1)
    before = float(loss_fn(y_true, model(inputs)))
    with tf.GradientTape() as tape:
        loss = loss_fn(y_true, model(inputs))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert float(loss_fn(y_true, model(inputs))) < before
