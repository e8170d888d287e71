"""Decoding: a tiny RNN-T overfits a handful of utterances to WER 0; greedy and beam search agree, beam scores are
at least greedy's; scores are consistent with the loss; bad decoder inputs; WER/CER."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import asr_ext  # noqa: F401
from asr_ext import data as ad
from asr_ext import decoding as dec
from asr_ext.models import RNNTConfig, build_rnnt
from asr_ext.rnnt_loss import RNNTLoss
from asr_ext.text import CharVocabulary
from kws_quant.data import synthesize, write_wav
from kws_quant.features import FeatureConfig

TEXTS = ["one two", "three", "nine four", "go"]
VOCAB = CharVocabulary()


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny RNN-T trained on four eSpeak utterances until greedy decoding reproduces them."""
    folder = tmp_path_factory.mktemp("overfit")
    rows = []
    for i, text in enumerate(TEXTS):
        path = folder / f"{i}.wav"
        write_wav(path, synthesize(text, "en-us", 170, 50, 50, 8000), 8000)
        rows.append(dict(utt_id=f"u{i}", path=str(path), text=text, speaker="s", split="train"))
    feats = FeatureConfig(sample_rate=8000, n_mels=20, n_fft=256)
    cfg = RNNTConfig(n_mels=20, lstm_units=(64,), reduce_after=(), frame_stack=3, pred_units=(32,),
                     joint_units=48, embed_dim=16, dropout=0.0)
    ds = ad.make_asr_dataset(ad.file_rows(rows), "train", VOCAB, feats, batch_size=4,
                             reduction_factors=cfg.reduction_factors, shuffle=False, bucket_boundaries=[])
    x, y = next(iter(ds))
    keras.utils.set_random_seed(0)
    model = build_rnnt(cfg, VOCAB.size)
    model.compile(keras.optimizers.Adam(1e-2), RNNTLoss(), jit_compile=False)
    refs = [VOCAB.decode(r[r > 0]) for r in x["labels"].numpy()]
    for _ in range(15):
        model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(20), epochs=1, verbose=0, shuffle=False)
        ids, _ = dec.greedy_decode(model, x["features"], x["feature_lengths"])
        if [VOCAB.decode(i) for i in ids] == refs:
            break
    return model, x, refs


def test_tiny_model_overfits_to_wer_zero_and_beam_agrees(overfit):
    model, x, refs = overfit
    f, n = x["features"], x["feature_lengths"]
    ids, greedy_scores = dec.greedy_decode(model, f, n, max_symbols=5)
    hyps = [VOCAB.decode(i) for i in ids]
    assert sorted(refs) == sorted(TEXTS)
    assert dec.error_rates(refs, hyps)["wer"] == 0.0 and hyps == refs
    best, beam_scores = dec.beam_search(model, f, n, beam_size=4, max_symbols=5)
    assert [VOCAB.decode(i) for i in best] == refs
    # beam >= greedy: in path score (greedy's path is one alignment of the beam's lattice) ...
    assert np.all(beam_scores >= greedy_scores - 1e-4), (beam_scores, greedy_scores)
    # ... and in the full sequence log-probability log P(y|x) from the loss
    lp_beam = dec.sequence_log_prob(model, f, n, *dec.pad_labels(best))
    lp_greedy = dec.sequence_log_prob(model, f, n, *dec.pad_labels(ids))
    assert np.all(lp_beam >= lp_greedy - 1e-4)
    # a path or a merged set of paths never exceeds the sum over all alignments
    assert np.all(greedy_scores <= lp_greedy + 1e-3) and np.all(beam_scores <= lp_beam + 1e-3)
    nbest = dec.beam_search(model, f, n, beam_size=3, nbest=True)
    assert all(len(r) <= 3 and [s for _, s in r] == sorted((s for _, s in r), reverse=True) for r in nbest)


def test_beam_and_greedy_on_random_model_keep_their_invariants():
    cfg = RNNTConfig(n_mels=12, lstm_units=(16,), reduce_after=(), pred_units=(8,), joint_units=12, embed_dim=4)
    keras.utils.set_random_seed(1)
    model = build_rnnt(cfg, VOCAB.size)
    rng = np.random.default_rng(0)
    f, n = rng.standard_normal((3, 20, 12)).astype("float32"), np.array([20, 9, 2])
    for max_symbols in (1, 3):
        ids, g = dec.greedy_decode(model, f, n, max_symbols=max_symbols)
        best, b = dec.beam_search(model, f, n, beam_size=4, max_symbols=max_symbols)
        t_enc = np.ceil(n / cfg.time_reduction)
        assert all(len(i) <= max_symbols * t for i, t in zip(ids, t_enc))
        assert np.all(b >= g - 1e-4)
        np.testing.assert_array_less(g, dec.sequence_log_prob(model, f, n, *dec.pad_labels(ids)) + 1e-3)


def test_decoder_input_errors():
    model = build_rnnt(RNNTConfig(n_mels=12, lstm_units=(8,), reduce_after=(), pred_units=(8,), joint_units=8,
                                  embed_dim=4), VOCAB.size)
    f = np.zeros((2, 10, 12), np.float32)
    with pytest.raises(ValueError, match=r"feature_lengths\[1\] = -1 is not allowed; must be in \[1, 10\]"):
        dec.greedy_decode(model, f, [5, -1])
    with pytest.raises(ValueError, match=r"feature_lengths\[0\] = 11 is not allowed"):
        dec.beam_search(model, f, [11, 3])
    with pytest.raises(ValueError, match="rank 3"):
        dec.greedy_decode(model, f[0], [5])
    with pytest.raises(ValueError, match=r"shape \[batch\] = \[2\]"):
        dec.greedy_decode(model, f, [5, 5, 5])
    with pytest.raises(ValueError, match="beam_size=0"):
        dec.beam_search(model, f, [5, 5], beam_size=0)
    with pytest.raises(ValueError, match="not an RNN-T"):
        dec.greedy_decode(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), f, [5, 5])
    with pytest.raises(ValueError, match="equals the blank id"):  # the loss's own check, through the helper
        dec.sequence_log_prob(model, f, [5, 5], np.array([[3, 0], [4, 4]]), [2, 2])


def test_error_rates():
    r = dec.error_rates(["one two three", "four"], ["one too three", ""])
    assert r["wer"] == pytest.approx(2 / 4) and r["words"] == 4 and r["sentence_errors"] == 2
    assert dec.error_rates(["ab"], ["ab"])["cer"] == 0.0
    with pytest.raises(ValueError, match="reference 1 is empty"):
        dec.error_rates(["a", " "], ["a", "b"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        dec.error_rates(["a", "b"], ["a"])
