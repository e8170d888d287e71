"""RNN-T decoding: batched greedy search, beam search, sequence log-probabilities and WER/CER (jiwer).

**Greedy** (batched, one ``tf.while_loop``): at each step every utterance evaluates the joint network at its
current frame and last emitted label; the argmax label is emitted (the prediction network advances) unless it is
blank or the utterance has already emitted ``max_symbols`` labels at this frame, in which case it moves to the
next frame. Its score is the log-probability of the path taken.

**Beam search** is time-synchronous beam search on the standard RNN-T lattice (the lattice the loss sums over;
after the "time synchronous decoding" of Saon, Tüske and Audhkhasi, ICASSP 2020): at every encoder frame each
hypothesis may emit up to ``max_symbols`` labels and then the frame's closing blank. Per frame, expansion round r
evaluates the joint for the hypotheses that have emitted r labels at this frame; each one is closed with blank
(entering the frame's "ended" set) and, if r < ``max_symbols``, extended by its ``beam_size`` best labels; the
``beam_size`` best extensions that can still beat the ``beam_size``-th ended score go to round r+1. Hypotheses
reaching the same label sequence are merged by log-adding their scores (the prediction network depends only on
the labels), so a score is the log of the summed probability of the alignments kept for that sequence, a lower
bound of ``log P(y | x)`` (see :func:`sequence_log_prob`). The ``beam_size`` best ended hypotheses go to the next
frame; the best one after the last frame is the result. Greedy search with the same ``max_symbols`` follows one
alignment of this lattice, so its path score is comparable with the beam's scores. Cost per frame:
``max_symbols + 1`` joint evaluations and ``max_symbols`` prediction-network steps, each batched over the beam;
the utterances of a batch are searched in lockstep (one joint and one prediction-network call per
round for the whole batch). (Graves' 2012 prefix search and k2's "modified" beam search, whose
label emissions consume a frame, are not implemented.)

Every function takes the Functional model made by :func:`asr_ext.models.build_rnnt` (or loaded from ``.keras``)
and uses its layers by name, in inference mode (quantizers as the model's QAT stage says, frozen ranges).
"""
from __future__ import annotations

import weakref

import jiwer
import keras
import numpy as np
import tensorflow as tf

import asr_ext.models  # noqa: F401  (registers the layers)
from asr_ext.rnnt_loss import rnnt_loss

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class RNNTInference:
    """The model split for step-wise decoding: encoder, one prediction-network step, one joint step."""

    def __init__(self, model: keras.Model):
        try:
            features = model.get_layer("features").output
            lengths = model.get_layer("feature_lengths").output
            enc_lengths = model.get_layer("enc_mask").input[1]
            self.pred_input = model.get_layer("pred_input")
            self.embed = model.get_layer("pred_embed")
            self.joint_enc = model.get_layer("joint_enc")
            self.joint_pred = model.get_layer("joint_pred")
            self.joint_act = model.get_layer("joint_act")
            self.joint_out = model.get_layer("joint_out")
        except ValueError as e:
            raise ValueError(f"model {model.name!r} is not an RNN-T built by asr_ext.models.build_rnnt: {e}") from None
        self.encoder = keras.Model([features, lengths], [self.joint_enc.output, enc_lengths])
        self.pred_lstms = []
        while True:
            try:
                self.pred_lstms.append(model.get_layer(f"pred_lstm_{len(self.pred_lstms)}"))
            except ValueError:
                break
        self.vocab_size = self.pred_input.vocab_size
        self.blank = self.pred_input.blank
        self._encode = tf.function(self._encode_fn, reduce_retracing=True, autograph=False)
        self._joint_logp = tf.function(self._joint_logp_fn, reduce_retracing=True, autograph=False)
        self._greedy = tf.function(self._greedy_fn, reduce_retracing=True, autograph=False)
        self._step = tf.function(self._step_fn, reduce_retracing=True, autograph=False)

    # -- building blocks ------------------------------------------------------------------------------------
    def _encode_fn(self, features, lengths):
        enc, enc_lengths = self.encoder([features, lengths], training=False)
        return enc, tf.cast(enc_lengths, tf.int32)

    def encode(self, features, lengths):
        """``features [B, T, F]``, ``lengths [B]`` → (joint-projected encoder output ``[B, T', J]``, ``T'_b [B]``)."""
        features, lengths = check_decoder_inputs(features, lengths)
        return self._encode(features, lengths)

    def _params(self):
        return [layer.quantized_parameters(False) for layer in self.pred_lstms]

    def _pred_fn(self, tokens, states, params=None):
        """tokens ``[B]`` int, states: list of ``(h, c)`` per LSTM → (joint-projected output ``[B, J]``, states)."""
        params = params or self._params()
        y = self.embed(tf.one_hot(tokens, self.vocab_size), training=False)
        new_states = []
        for layer, state, p in zip(self.pred_lstms, states, params):
            y, state = layer.step(y, state, training=False, parameters=p)
            new_states.append(state)
        return self.joint_pred(y, training=False), new_states

    def zero_states(self, batch_size):
        return [tuple(tf.zeros([batch_size, layer.units]) for _ in range(2)) for layer in self.pred_lstms]

    def _joint_logp_fn(self, enc, pred):
        """``enc [N, J]``, ``pred [N, J]`` (both projected) → log-softmax ``[N, V]``."""
        z = self.joint_act(enc + pred, training=False)
        return tf.nn.log_softmax(tf.cast(self.joint_out(z, training=False), tf.float32))

    # -- greedy -----------------------------------------------------------------------------------------------
    def _greedy_fn(self, enc, enc_lengths, max_symbols):
        b, t_max = tf.shape(enc)[0], tf.shape(enc)[1]
        params = self._params()
        pred, states = self._pred_fn(tf.fill([b], self.blank), self.zero_states(b), params)
        t = tf.zeros([b], tf.int32)
        n = tf.zeros([b], tf.int32)
        score = tf.zeros([b], tf.float32)
        emitted = tf.TensorArray(tf.int32, size=0, dynamic_size=True)

        def body(i, t, n, pred, states, score, emitted):
            active = t < enc_lengths
            frame = tf.gather(enc, tf.minimum(t, t_max - 1), batch_dims=1)
            logp = self._joint_logp_fn(frame, pred)
            k = tf.argmax(logp, axis=-1, output_type=tf.int32)
            k = tf.where(n >= max_symbols, self.blank, k)
            emit = active & (k != self.blank)
            score += tf.where(active, tf.gather(logp, k, batch_dims=1), 0.0)
            new_pred, new_states = self._pred_fn(k, states, params)
            pred = tf.where(emit[:, None], new_pred, pred)
            states = tf.nest.map_structure(lambda a, s: tf.where(emit[:, None], a, s), new_states, states)
            advance = active & ~emit
            t += tf.cast(advance, tf.int32)
            n = tf.where(emit, n + 1, tf.where(advance, 0, n))
            return i + 1, t, n, pred, states, score, emitted.write(i, tf.where(emit, k, -1))

        out = tf.while_loop(lambda i, t, *_: tf.reduce_any(t < enc_lengths), body,
                            (0, t, n, pred, states, score, emitted),
                            maximum_iterations=t_max * (max_symbols + 1) + 1)
        tokens = out[-1].stack()  # [steps, B], -1 where nothing was emitted
        return tf.reshape(tokens, [-1, b]), out[-2]

    def greedy(self, features, lengths, max_symbols: int = 5):
        """Batched greedy search → (list of label-id arrays, path log-probabilities ``[B]``)."""
        if isinstance(max_symbols, bool) or not isinstance(max_symbols, (int, np.integer)) or max_symbols < 1:
            raise ValueError(f"max_symbols={max_symbols!r} must be a positive integer")
        enc, enc_lengths = self.encode(features, lengths)
        tokens, score = self._greedy(enc, enc_lengths, tf.constant(int(max_symbols)))
        tokens = tokens.numpy()
        return [tokens[:, j][tokens[:, j] >= 0] for j in range(tokens.shape[1])], score.numpy()

    # -- beam search ------------------------------------------------------------------------------------------
    def _step_fn(self, tokens, states):
        """One prediction-network step on numpy-friendly flat states ``[h_0, c_0, h_1, c_1, ...]``."""
        pairs = [(states[2 * j], states[2 * j + 1]) for j in range(len(self.pred_lstms))]
        pred, new = self._pred_fn(tokens, pairs)
        return pred, [x for pair in new for x in pair]

    def beam_search(self, features, lengths, beam_size: int = 4, max_symbols: int = 5, nbest: bool = False):
        """Time-synchronous beam search (see the module docstring) → (best label-id arrays, their scores), or with
        ``nbest`` a list per utterance of ``(ids, score)``, best first. The utterances of a batch are searched in
        lockstep, so each expansion round is one joint call and one prediction-network call for the whole batch."""
        for name, v in (("beam_size", beam_size), ("max_symbols", max_symbols)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        k, blank = int(beam_size), self.blank
        enc, enc_lengths = self.encode(features, lengths)
        enc, enc_lengths = enc.numpy(), enc_lengths.numpy()
        pred0, state0 = self._step(tf.constant([blank]), [x for pair in self.zero_states(1) for x in pair])
        start = _Hyp(0.0, pred0.numpy()[0], [x.numpy()[0] for x in state0])
        hyps = [{(): start} for _ in range(enc.shape[0])]  # labels -> _Hyp; scores cover the frames before t
        for t in range(int(enc_lengths.max(initial=0))):
            live = [b for b in range(enc.shape[0]) if t < enc_lengths[b]]
            ended = {b: {} for b in live}  # labels -> _Hyp including this frame's closing blank
            active = {b: hyps[b] for b in live}
            for r in range(int(max_symbols) + 1):
                items = [(b, key, h) for b in live for key, h in active[b].items()]
                if not items:
                    break
                logp = self._joint_logp(enc[[b for b, _, _ in items], t],
                                        np.stack([h.pred for _, _, h in items])).numpy()
                for (b, key, h), row in zip(items, logp):
                    score = h.score + float(row[blank])
                    old = ended[b].get(key)
                    if old is None:
                        ended[b][key] = _Hyp(score, h.pred, h.states)
                    else:
                        old.score = float(np.logaddexp(old.score, score))
                if r == max_symbols:
                    break
                grow = []  # (utterance, labels, score, source hyp, label)
                offset = 0
                for b in live:
                    n = len(active[b])
                    cand = {}
                    for (_, key, h), row in zip(items[offset:offset + n], logp[offset:offset + n]):
                        row = row.copy()
                        row[blank] = -np.inf
                        for v in np.argpartition(-row, min(k, row.size - 1))[:k]:
                            labels, score = key + (int(v),), h.score + float(row[v])
                            if labels in cand:
                                cand[labels][0] = float(np.logaddexp(cand[labels][0], score))
                            else:
                                cand[labels] = [score, h, int(v)]
                    offset += n
                    scores = sorted((h.score for h in ended[b].values()), reverse=True)
                    floor = scores[k - 1] if len(scores) >= k else -np.inf
                    best = sorted(cand.items(), key=lambda kv: -kv[1][0])[:k]
                    # a blank only lowers a score: bar later merges, those below the floor cannot enter the beam
                    grow += [(b, labels, score, h, v) for labels, (score, h, v) in best if score > floor]
                active = {b: {} for b in live}
                if not grow:
                    break
                states = [np.stack([g[3].states[j] for g in grow]) for j in range(2 * len(self.pred_lstms))]
                p, s = self._step(tf.constant([g[4] for g in grow], tf.int32), states)
                p, s = p.numpy(), [x.numpy() for x in s]
                for i, (b, labels, score, _, _) in enumerate(grow):
                    active[b][labels] = _Hyp(score, p[i], [x[i] for x in s])
            for b in live:
                hyps[b] = dict(sorted(ended[b].items(), key=lambda kv: -kv[1].score)[:k])
        results = [[(np.array(labels, np.int32), h.score) for labels, h in
                    sorted(hy.items(), key=lambda kv: -kv[1].score)] for hy in hyps]
        if nbest:
            return results
        return [r[0][0] for r in results], np.array([r[0][1] for r in results], np.float32)


class _Hyp:
    """A beam-search hypothesis: score, projected prediction-network output ``[J]``, LSTM states."""

    __slots__ = ("score", "pred", "states")

    def __init__(self, score, pred, states):
        self.score, self.pred, self.states = score, pred, states


def inference(model: keras.Model) -> RNNTInference:
    """The (cached) :class:`RNNTInference` of ``model``."""
    inf = _CACHE.get(model)
    if inf is None:
        inf = _CACHE[model] = RNNTInference(model)
    return inf


def check_decoder_inputs(features, lengths):
    """``features [B, T, F]`` float and ``lengths [B]`` int with each length in [1, T]; clear ``ValueError``s."""
    features = np.asarray(features, np.float32) if not tf.is_tensor(features) else tf.cast(features, tf.float32)
    lengths_np = np.asarray(lengths.numpy() if tf.is_tensor(lengths) else lengths)
    if len(features.shape) != 3:
        raise ValueError(f"features must have rank 3 [batch, frames, n_mels]; got shape {tuple(features.shape)}")
    if lengths_np.ndim != 1 or lengths_np.shape[0] != features.shape[0]:
        raise ValueError(f"feature_lengths must have shape [batch] = [{features.shape[0]}]; got {lengths_np.shape}")
    if not np.issubdtype(lengths_np.dtype, np.integer):
        raise ValueError(f"feature_lengths must be integers; got dtype {lengths_np.dtype}")
    t = features.shape[1]
    bad = np.flatnonzero((lengths_np < 1) | (lengths_np > t))
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"feature_lengths[{b}] = {int(lengths_np[b])} is not allowed; must be in [1, {t}] "
                         f"(features.shape[1])")
    return tf.convert_to_tensor(features), tf.constant(lengths_np.astype(np.int32))


def greedy_decode(model, features, feature_lengths, max_symbols: int = 5):
    """Batched greedy RNN-T decoding → (list of label-id arrays, path log-probabilities)."""
    return inference(model).greedy(features, feature_lengths, max_symbols)


def beam_search(model, features, feature_lengths, beam_size: int = 4, max_symbols: int = 5, nbest: bool = False):
    """Time-synchronous beam search (≤ ``max_symbols`` labels per frame) → (best label-id arrays, scores), or
    n-best lists of ``(ids, score)``."""
    return inference(model).beam_search(features, feature_lengths, beam_size, max_symbols, nbest)


def sequence_log_prob(model, features, feature_lengths, labels, label_lengths):
    """``log P(y | x)`` summed over all alignments (``-rnnt_loss``), ``[B]`` float32."""
    features, feature_lengths = check_decoder_inputs(features, feature_lengths)
    labels = np.asarray(labels, np.int32)
    if labels.ndim == 1:
        labels = labels[None]
    if labels.shape[1] == 0:  # the model needs one label column; a padding column with length 0 changes nothing
        labels = np.zeros((labels.shape[0], 1), np.int32)
    logits = model({"features": features, "feature_lengths": feature_lengths, "labels": tf.constant(labels)},
                   training=False)
    enc_lengths = inference(model).encode(features, feature_lengths)[1]
    return -rnnt_loss(logits, labels, enc_lengths, np.asarray(label_lengths, np.int32)).numpy()


def pad_labels(sequences, pad: int = 0):
    """List of id arrays → (``[B, max(U_b, 1)]`` int32, lengths ``[B]``)."""
    lengths = np.array([len(s) for s in sequences], np.int32)
    out = np.full((len(sequences), max(1, int(lengths.max(initial=0)))), pad, np.int32)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = s
    return out, lengths


def error_rates(references, hypotheses) -> dict:
    """``{"wer", "cer", "words", "chars", "utterances", "sentence_errors"}`` with jiwer (corpus-level rates: total
    edits / total reference words or characters). Empty references are not allowed."""
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    empty = [i for i, r in enumerate(references) if not r.strip()]
    if empty:
        raise ValueError(f"reference {empty[0]} is empty; WER needs at least one reference word per utterance")
    return {"wer": float(jiwer.wer(references, hypotheses)), "cer": float(jiwer.cer(references, hypotheses)),
            "words": int(sum(len(r.split()) for r in references)), "chars": int(sum(len(r) for r in references)),
            "utterances": len(references),
            "sentence_errors": int(sum(r.split() != h.split() for r, h in zip(references, hypotheses)))}
