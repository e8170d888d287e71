"""RNN-T loss (Graves 2012; METHODS §9) with an explicit α/β gradient, vectorised over batch and wavefront.

Lattice: node ``(t, u)`` = "``t`` frames consumed, ``u`` labels emitted"; from ``(t, u)`` a blank moves to
``(t+1, u)`` with log-probability ``lp(t, u, blank)`` and a label moves to ``(t, u+1)`` with ``lp(t, u, y_{u+1})``,
``lp = log_softmax(logits)``. The final blank from ``(T_b-1, U_b)`` ends on a virtual node ``(T_b, U_b)``, so
``-loss_b = α(T_b, U_b) = α(T_b-1, U_b) + lp(T_b-1, U_b, blank)``.

Implementation: the per-node blank/label log-probabilities ``[B, T, U+1]`` are skewed once into anti-diagonals
``n = t + u`` (``[T+U+1, B, U+1]``, one contiguous slice per diagonal, -inf outside each utterance's lattice), and
α (forward) and β (in the gradient) are each one XLA-compiled ``tf.while_loop`` over the diagonals, vectorised over
batch and u. Each diagonal is shifted to max 0 (float32 rounding then stays relative to O(1) values, not to the
~1e3-nat running total). The gradient is formed from α, β and the softmax in closed form (``tf.custom_gradient``):
autodiff never enters the loops. All arithmetic is float32 whatever the logits' dtype; the gradient is cast back.
XLA compiles the loops once per power-of-two bucket of (T+U+1, B, U+1), about 1 s of CPU each.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_REDUCTIONS = ("none", "sum", "mean")


# -- input checks ---------------------------------------------------------------------------------------------
def _static_checks(logits, labels, logit_lengths, label_lengths, blank):
    """Rank, shape and blank-id checks on static shapes; raises ValueError (also at trace time)."""
    for name, x, rank, layout in (("logits", logits, 4, "[B, T, U+1, V]"), ("labels", labels, 2, "[B, U]"),
                                  ("logit_lengths", logit_lengths, 1, "[B]"),
                                  ("label_lengths", label_lengths, 1, "[B]")):
        if x.shape.rank != rank:
            raise ValueError(f"rnnt_loss: {name} must have rank {rank} {layout}; got rank {x.shape.rank} "
                             f"with shape {x.shape}")
    if not logits.dtype.is_floating:
        raise ValueError(f"rnnt_loss: logits must be a float tensor; got dtype {logits.dtype.name}")
    for name, x in (("labels", labels), ("logit_lengths", logit_lengths), ("label_lengths", label_lengths)):
        if not x.dtype.is_integer:
            raise ValueError(f"rnnt_loss: {name} must be an integer tensor; got dtype {x.dtype.name}")
    u1, u = logits.shape[2], labels.shape[1]
    if u1 is not None and u is not None and u1 != u + 1:
        raise ValueError(f"rnnt_loss: logits.shape[2] (U+1) must equal labels.shape[1] + 1 = {u + 1}; got "
                         f"{u1} (logits shape {logits.shape}, labels shape {labels.shape})")
    batch = {n: x.shape[0] for n, x in (("logits", logits), ("labels", labels), ("logit_lengths", logit_lengths),
                                        ("label_lengths", label_lengths)) if x.shape[0] is not None}
    if len(set(batch.values())) > 1:
        raise ValueError(f"rnnt_loss: batch sizes differ: {batch}")
    if 0 in batch.values():
        raise ValueError(f"rnnt_loss: the batch is empty (B = 0; logits shape {logits.shape}); give at least one "
                         "utterance")
    v = logits.shape[3]
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or blank < 0 or \
            (v is not None and blank >= v):
        raise ValueError(f"rnnt_loss: blank={blank!r} is not allowed; allowed: an int in [0, V) with V = {v}")


def _first_bad(mask):
    """Index tuple of the first True in a numpy bool array."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _eager_checks(logits, labels, logit_lengths, label_lengths, blank):
    """Value checks on concrete inputs; raises ValueError naming the argument, index and value."""
    t_max, u_max, v = logits.shape[1], labels.shape[1], logits.shape[3]
    lab, tl, ul = labels.numpy(), logit_lengths.numpy(), label_lengths.numpy()
    for name, x, hi, dim in (("logit_lengths", tl, t_max, "logits.shape[1] (T)"),
                             ("label_lengths", ul, u_max, "labels.shape[1] (U)")):
        lo = 1 if name == "logit_lengths" else 0
        if (x < lo).any():
            b = _first_bad(x < lo)[0]
            raise ValueError(f"rnnt_loss: {name}[{b}] = {x[b]} is not allowed; must be >= {lo}")
        if (x > hi).any():
            b = _first_bad(x > hi)[0]
            raise ValueError(f"rnnt_loss: {name}[{b}] = {x[b]} exceeds {dim} = {hi}")
    valid = np.arange(u_max)[None, :] < ul[:, None]
    if (valid & (lab == blank)).any():
        b, u = _first_bad(valid & (lab == blank))
        raise ValueError(f"rnnt_loss: labels[{b}, {u}] = {blank} equals the blank id (within label_lengths[{b}] "
                         f"= {ul[b]}); labels must not contain blank")
    if (valid & ((lab < 0) | (lab >= v))).any():
        b, u = _first_bad(valid & ((lab < 0) | (lab >= v)))
        raise ValueError(f"rnnt_loss: labels[{b}, {u}] = {lab[b, u]} is outside [0, V) with V = {v} "
                         f"(within label_lengths[{b}] = {ul[b]})")


def _graph_asserts(logits, labels, logit_lengths, label_lengths, blank):
    """The same value checks as ``tf.debugging`` asserts (InvalidArgumentError at run time)."""
    shape = tf.shape(logits)
    u_max = tf.shape(labels)[1]
    valid = tf.range(u_max)[None, :] < label_lengths[:, None]
    return [
        tf.debugging.assert_positive(shape[0], message="rnnt_loss: the batch is empty (B = 0)"),
        tf.debugging.assert_equal(shape[2], u_max + 1, message="rnnt_loss: logits.shape[2] (U+1) must equal "
                                  "labels.shape[1] + 1"),
        tf.debugging.assert_greater_equal(logit_lengths, 1, message="rnnt_loss: logit_lengths must be >= 1"),
        tf.debugging.assert_less_equal(logit_lengths, shape[1], message="rnnt_loss: logit_lengths exceeds "
                                       "logits.shape[1] (T)"),
        tf.debugging.assert_greater_equal(label_lengths, 0, message="rnnt_loss: label_lengths must be >= 0"),
        tf.debugging.assert_less_equal(label_lengths, u_max, message="rnnt_loss: label_lengths exceeds "
                                       "labels.shape[1] (U)"),
        tf.debugging.Assert(tf.reduce_all(~valid | (labels != blank)),
                            ["rnnt_loss: labels contain the blank id within label_lengths; blank =", blank]),
        tf.debugging.Assert(tf.reduce_all(~valid | ((labels >= 0) & (labels < shape[3]))),
                            ["rnnt_loss: labels outside [0, V) within label_lengths"]),
    ]


def _untrusted(x, labels, logit_lengths, label_lengths, blank):
    """[B] bool: utterances whose loss cannot be trusted, as tensor ops that XLA keeps (it drops asserts): a
    non-finite logit (NaN, +inf or -inf, any of the V entries) at a node of the utterance's lattice (t < T_b,
    u <= U_b), a length outside its range, or a label within U_b that is blank or outside [0, V). x: float32."""
    shape = tf.shape(x)
    t_max, u1, v = shape[1], shape[2], shape[3]
    u_max = tf.shape(labels)[1]
    valid = tf.range(u_max)[None, :] < label_lengths[:, None]
    bad_label = tf.reduce_any(valid & ((labels == blank) | (labels < 0) | (labels >= v)), axis=1)
    bad_length = ((logit_lengths < 1) | (logit_lengths > t_max) | (label_lengths < 0) | (label_lengths > u_max)
                  | (u1 != u_max + 1))
    in_lattice = ((tf.range(t_max)[None, :, None] < logit_lengths[:, None, None])
                  & (tf.range(u1)[None, None, :] <= label_lengths[:, None, None]))
    non_finite = tf.reduce_any(in_lattice & tf.reduce_any(~tf.math.is_finite(x), axis=3), axis=[1, 2])
    return bad_label | bad_length | non_finite


# -- lattice kernels ------------------------------------------------------------------------------------------
def _logaddexp(a, b):
    """log(exp(a) + exp(b)), exact -inf for two -inf inputs and no NaN."""
    hi, lo = tf.maximum(a, b), tf.minimum(a, b)
    hi_safe = tf.where(tf.math.is_inf(hi), tf.zeros_like(hi), hi)
    return hi + tf.math.log1p(tf.exp(lo - hi_safe))


def _skew(x):
    """[B, T, U1] -> [T+U1, B, U1] with out[n, b, u] = x[b, n-u, u] (-inf where n-u is outside [0, T))."""
    b, t, u1 = tf.unstack(tf.shape(x))
    x = tf.pad(tf.transpose(x, [0, 2, 1]), [[0, 0], [0, 0], [0, u1 + 1]], constant_values=-np.inf)
    x = tf.reshape(tf.reshape(x, [b, -1])[:, :u1 * (t + u1)], [b, u1, t + u1])  # row u shifted right by u
    return tf.transpose(x, [2, 0, 1])


def _unskew(s, t):
    """Inverse of ``_skew`` for the first ``t`` frames: [N, B, U1] -> [B, t, U1] with out[b, t, u] = s[t+u, b, u]."""
    n, b, u1 = tf.unstack(tf.shape(s))
    s = tf.pad(tf.reshape(tf.transpose(s, [1, 2, 0]), [b, -1]), [[0, 0], [0, u1]])
    return tf.transpose(tf.reshape(s, [b, u1, n + 1])[:, :, :t], [0, 2, 1])


def _renorm(x):
    """Shift each row of x [B, U1] so its max is 0 -> (x - s, s [B]); all -inf rows are left as they are."""
    s = tf.reduce_max(x, axis=1)
    s = tf.where(tf.math.is_inf(s), tf.zeros_like(s), s)
    return x - s[:, None], s


# The loops are XLA-compiled (4-5x faster than TF's while_loop on CPU). XLA compiles once per input shape, so the
# lattice is padded to power-of-two buckets (-inf padding) and the number of diagonals n is a run-time value:
# every T+U up to 2^k shares one compiled loop.
@tf.function(jit_compile=True, reduce_retracing=True)
def _alpha(blank_sk, emit_sk, n):
    """Forward variables, one diagonal per step. blank_sk, emit_sk: [P, B, U1] skewed log-probs (nats) with n real
    diagonals -> (a [P, B, U1], s [P, B]), valid up to index n, with α_k = a_k + Σ_{j<=k} s_j and max(a_k) = 0.
    (An unshifted float32 α loses ~1e-4 nats per diagonal once it reaches ~1e3 nats; gradients need α - logP.)"""
    p, b, u1 = tf.unstack(tf.shape(blank_sk))
    neg_inf = tf.fill([b, 1], -np.inf)
    a0 = tf.concat([tf.zeros([b, 1]), tf.fill([b, u1 - 1], -np.inf)], axis=1)
    ta = tf.TensorArray(tf.float32, size=p, element_shape=blank_sk.shape[1:]).write(0, a0)
    ts = tf.TensorArray(tf.float32, size=p, element_shape=blank_sk.shape[1:2]).write(0, tf.zeros([b]))

    def step(i, a, ta, ts):
        move = tf.concat([neg_inf, (a + emit_sk[i])[:, :-1]], axis=1)  # (t, u-1) -> (t, u)
        a, s = _renorm(_logaddexp(a + blank_sk[i], move))  # (t-1, u) -> (t, u)
        return i + 1, a, ta.write(i + 1, a), ts.write(i + 1, s)

    _, _, ta, ts = tf.while_loop(lambda i, *_: i < n, step, (0, a0, ta, ts), maximum_iterations=p - 1)
    return ta.stack(), ts.stack()


@tf.function(jit_compile=True, reduce_retracing=True)
def _beta(blank_sk, emit_sk, term_sk, n):
    """Backward variables (log-prob of finishing from each node), each diagonal shifted to max 0 (the shifts
    cancel in the per-diagonal normalised occupancies). term_sk: [P, B, U1], 0 at each utterance's virtual end
    node (T_b, U_b), -inf elsewhere -> [P, B, U1], valid up to index n."""
    p, b = tf.shape(blank_sk)[0], tf.shape(blank_sk)[1]
    neg_inf = tf.fill([b, 1], -np.inf)
    beta = tf.gather(term_sk, n)  # gather, not term_sk[n]: XLA would compile a slice per value of n
    out = tf.TensorArray(tf.float32, size=p, element_shape=blank_sk.shape[1:]).write(n, beta)

    def step(i, beta, out):
        move = tf.concat([beta[:, 1:], neg_inf], axis=1) + emit_sk[i]  # (t, u) -> (t, u+1)
        beta, _ = _renorm(tf.maximum(_logaddexp(beta + blank_sk[i], move), term_sk[i]))  # (t, u) -> (t+1, u)
        return i - 1, beta, out.write(i, beta)

    return tf.while_loop(lambda i, *_: i >= 0, step, (n - 1, beta, out), maximum_iterations=p - 1)[2].stack()


def _bucket(size, minimum):
    """Smallest power of two >= max(size, minimum), as an int32 scalar tensor."""
    size = tf.maximum(size, minimum)
    p = tf.cast(2.0 ** tf.round(tf.math.log(tf.cast(size, tf.float32)) / np.log(2.0)), tf.int32)
    return tf.where(p < size, 2 * p, p)


def _in_bucket(loop, *lattices):
    """Run loop(*lattices, n) on [N+1, B, U1] lattices (N diagonals, +1 for the end nodes) padded with -inf to
    power-of-two buckets; returns its outputs cropped back to [N+1, B(, U1)]."""
    shape = tf.shape(lattices[0])
    size = tf.stack([_bucket(shape[0], 32), _bucket(shape[1], 8), _bucket(shape[2], 8)])
    padded = [tf.pad(x, tf.stack([tf.zeros([3], tf.int32), size - shape], axis=1), constant_values=-np.inf)
              for x in lattices]
    outs = loop(*padded, shape[0] - 1)
    return [tf.slice(out, [0] * out.shape.rank, shape[:out.shape.rank]) for out in tf.nest.flatten(outs)]


# -- public API -----------------------------------------------------------------------------------------------
def rnnt_loss(logits, labels, logit_lengths, label_lengths, blank: int = 0, reduction: str = "none"):
    """RNN-T negative log-likelihood (nats) per utterance.

    Args:
        logits: [B, T, U+1, V] float (float16/bfloat16/float32/float64), unnormalised joint-network output.
        labels: [B, U] int, label ids; entries at ``u >= label_lengths[b]`` are padding (any value).
        logit_lengths: [B] int, frames per utterance, each in [1, T].
        label_lengths: [B] int, labels per utterance, each in [0, U].
        blank: blank id in [0, V); labels must not contain it within their length.
        reduction: ``"none"`` -> [B]; ``"sum"`` / ``"mean"`` over the batch -> scalar.

    Returns:
        float32 loss ``-log P(y_b | x_b)``. Padding (``t >= T_b``, ``u > U_b``) does not affect it (it may hold any
        value, NaN included) and gets zero gradient. The gradient w.r.t. ``logits`` has the logits' dtype.
        An utterance with a non-finite logit (NaN, +inf or -inf, in any of the V entries) at a node of its lattice
        (``t < T_b``, ``u <= U_b``) gets a NaN loss and an all-NaN gradient, in every mode.

    Raises:
        ValueError: bad rank/shape/dtype/blank/reduction or an empty batch (``B = 0``, whenever B is known at trace
            time), and (for concrete eager inputs) out-of-range lengths or labels.

    Checks by mode: eagerly, every check raises ``ValueError``. Inside ``tf.function`` the shape checks raise
    ``ValueError`` at trace time and the value checks (lengths, labels, a B only known at run time) are
    ``tf.debugging`` asserts (``InvalidArgumentError``). XLA (``jit_compile=True``, Keras' default on a GPU) drops
    asserts; there the same value checks are made in the compiled graph instead: each utterance with a length
    outside its range or a label within ``label_lengths`` that is blank or outside ``[0, V)`` gets a NaN loss and
    a NaN gradient (so Keras training stops on it with ``kws_quant.experiments.training.StopOnNonFiniteLoss``); a batch that is
    empty only at run time gives an empty loss (``reduction="mean"``: NaN).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"rnnt_loss: reduction={reduction!r} is not allowed; allowed: {_REDUCTIONS}")
    logits = tf.convert_to_tensor(logits)
    labels, logit_lengths, label_lengths = (tf.convert_to_tensor(x) for x in (labels, logit_lengths, label_lengths))
    _static_checks(logits, labels, logit_lengths, label_lengths, blank)
    labels, logit_lengths, label_lengths = (tf.cast(x, tf.int32) for x in (labels, logit_lengths, label_lengths))
    if tf.executing_eagerly():
        _eager_checks(logits, labels, logit_lengths, label_lengths, blank)
        checks = []
    else:
        checks = _graph_asserts(logits, labels, logit_lengths, label_lengths, blank)
    with tf.control_dependencies(checks):
        loss = _rnnt_nll(logits, labels, logit_lengths, label_lengths, blank)
    if reduction == "sum":
        return tf.reduce_sum(loss)
    return tf.reduce_mean(loss) if reduction == "mean" else loss


def _rnnt_nll(logits, labels, logit_lengths, label_lengths, blank):
    """Unchecked core: [B] float32 NLL with the closed-form α/β gradient."""

    @tf.custom_gradient
    def nll(logits_in):
        x = tf.cast(tf.stop_gradient(logits_in), tf.float32)  # keep tapes out of the loops
        shape = tf.shape(x)
        t_max, u1, v = shape[1], shape[2], shape[3]
        # NaN loss (and gradient) for an utterance that reads a non-finite logit or is out of range: without it a
        # NaN at a lattice node can vanish in the max/logaddexp of the α loop (a finite loss, a NaN gradient), and
        # under XLA, where asserts are dropped, out-of-range lengths or labels would give a number.
        untrusted = _untrusted(x, labels, logit_lengths, label_lengths, blank)
        lp = tf.nn.log_softmax(x)  # [B, T, U1, V]; only its blank/label entries outlive the forward pass
        ids = tf.pad(tf.clip_by_value(labels, 0, v - 1), [[0, 0], [0, 1]])  # y_{u+1}; dummy at u = U, padding
        t_idx, u_idx = tf.range(t_max)[None, :, None], tf.range(u1)[None, None, :]
        in_t = t_idx < logit_lengths[:, None, None]
        # -inf outside each utterance's lattice, so padding never reaches α, β or the per-diagonal shifts.
        blank_lp = tf.where(in_t & (u_idx <= label_lengths[:, None, None]), lp[..., blank], -np.inf)
        emit_lp = tf.where(in_t & (u_idx < label_lengths[:, None, None]),
                           tf.gather(lp, tf.broadcast_to(ids[:, None, :], shape[:3]), batch_dims=3), -np.inf)
        blank_sk, emit_sk = _skew(blank_lp), _skew(emit_lp)  # [T+U1, B, U1]; the last diagonal is all -inf
        alpha, shift = _in_bucket(_alpha, blank_sk, emit_sk)  # [T+U1, B, U1], [T+U1, B]
        end = tf.stack([logit_lengths + label_lengths, tf.range(shape[0]), label_lengths], axis=1)  # (T_b, U_b)
        # α(T_b, U_b); diagonals past an utterance's end are all -inf, so their shifts are 0 and the sum can run on.
        log_p = tf.gather_nd(alpha, end) + tf.reduce_sum(shift, axis=0)

        def grad(dy):
            term = tf.where(tf.scatter_nd(end, tf.ones_like(end[:, 0]), tf.shape(alpha)) > 0, 0.0, -np.inf)
            beta = _in_bucket(_beta, blank_sk, emit_sk, term)[0]
            # Log-occupancy of each arc from diagonal n, up to a per-(n, b) constant: every alignment crosses
            # each diagonal n < T_b + U_b once, so normalising over the diagonal gives P(alignment uses the arc).
            e_blank = alpha[:-1] + blank_sk[:-1] + beta[1:]
            e_emit = alpha[:-1] + emit_sk[:-1] + tf.pad(beta[1:, :, 1:], [[0, 0], [0, 0], [0, 1]],
                                                        constant_values=-np.inf)
            norm = tf.reduce_logsumexp(tf.concat([e_blank, e_emit], axis=2), axis=2, keepdims=True)  # [N, B, 1]
            norm = tf.where(tf.math.is_inf(norm), tf.zeros_like(norm), norm)  # diagonals past an utterance's end
            dy = tf.cast(dy, tf.float32)[:, None, None, None]
            occ_blank = _unskew(tf.exp(e_blank - norm), t_max)[..., None] * dy  # [B, T, U1, 1]
            occ_emit = _unskew(tf.exp(e_emit - norm), t_max)[..., None] * dy
            # dNLL/dlogits = softmax · (occ_blank + occ_emit) - onehot(blank) · occ_blank - onehot(y) · occ_emit;
            # multiply_no_nan keeps non-finite padding logits (occupancy 0) out of the gradient. The softmax is
            # recomputed from logits_in so that no float32 copy of low-precision logits is held between passes.
            g = tf.math.multiply_no_nan(tf.nn.softmax(tf.cast(logits_in, tf.float32)), occ_blank + occ_emit)
            g -= tf.one_hot(blank, v)[None, None, None, :] * occ_blank + tf.one_hot(ids, v)[:, None, :, :] * occ_emit
            g = tf.where(untrusted[:, None, None, None], np.float32(np.nan), g)
            return tf.cast(g, logits_in.dtype)

        return tf.where(untrusted, np.float32(np.nan), -log_p), grad

    return nll(logits)


def rnnt_targets(labels, logit_lengths, label_lengths):
    """Pack targets for ``RNNTLoss``: [B, 1+U] int32 = ``[logit_length, y_1 .. y_U_b, -1 ...]``."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.range(tf.shape(labels)[1])[None, :] < tf.cast(label_lengths, tf.int32)[:, None]
    return tf.concat([tf.cast(logit_lengths, tf.int32)[:, None], tf.where(valid, labels, -1)], axis=1)


@keras.saving.register_keras_serializable(package="asr_ext")
class RNNTLoss(keras.losses.Loss):
    """Keras RNN-T loss. ``y_pred``: logits [B, T, U+1, V]. ``y_true``: [B, 1+U] ints packed as
    ``[logit_length, labels padded with -1]`` (see ``rnnt_targets``): column 0 is the frame count T_b, the rest
    are the labels, and U_b is the number of non-negative labels (padding must be trailing)."""

    def __init__(self, blank: int = 0, reduction="sum_over_batch_size", name="rnnt_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.blank = blank

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)  # Keras hands y_true over as a float tensor; ids < 2^24 are exact
        labels = y_true[:, 1:]
        label_lengths = tf.reduce_sum(tf.cast(labels >= 0, tf.int32), axis=1)
        return rnnt_loss(y_pred, labels, y_true[:, 0], label_lengths, blank=self.blank, reduction="none")

    def get_config(self):
        return {**super().get_config(), "blank": self.blank}
