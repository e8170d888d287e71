"""ASR data: corpora as manifests, character targets, and the tf.data pipeline for RNN-T training.

Every corpus is a manifest DataFrame with one row per utterance:

    utt_id    unique id
    text      the transcript (checked against the vocabulary when a dataset is made)
    speaker   speaker (or synthetic voice) id; splits never share a speaker unless documented otherwise
    split     train | validation | test
    segments  tuple of (path, ms): a file (ms ignored, whole file) or, with path "", silence of ms milliseconds;
              the utterance's audio is their concatenation
    duration  seconds (from the file headers), for length checks and bucketing
    source    where the row comes from (file, transcript line), for error messages
    label_ids optional: pre-tokenised label ids used instead of ``text`` (checked: no blank, all in [1, V))

Corpora:

- :func:`fsdd_connected_digits`: connected digits from the Free Spoken Digit Dataset (one speaker per utterance,
  2-5 digits with 50-300 ms gaps, deterministic for a seed, speaker-disjoint test).
- :func:`synthetic_corpus`: digit strings and short sentences spoken by eSpeak NG voices (the default when no data is
  given), voice-disjoint splits, rendered once and cached.
- :func:`read_librispeech`: a LibriSpeech-style tree (``<speaker>/<chapter>/<id>.trans.txt`` + FLAC).
- :func:`read_sphinx_corpus`: a CMU Sphinx tree such as AN4 (``etc/*.transcription``, ``wav/**.{sph,flac,wav}``).

:func:`make_asr_dataset` turns a split into padded, length-bucketed batches
``({"features", "feature_lengths", "labels"}, targets)`` for ``model.fit`` with ``RNNTLoss``.

The code lives in :mod:`asr_ext.corpora` (the corpora) and :mod:`asr_ext.asr_pipeline` (targets, augmentation, the
dataset); this module re-exports both, as before.
"""
from asr_ext.asr_pipeline import (ASRAugmentConfig, AudioAssembler, augment_waveform, encode_targets,
                                  make_asr_dataset, mel_warp, spec_augment)
from asr_ext.corpora import (DIGIT_WORDS, MANIFEST_COLUMNS, SENTENCE_WORDS, SYNTHETIC_FORMAT, SyntheticASRConfig,
                             check_manifest, default_cache_dir, file_rows, fsdd_connected_digits, read_librispeech,
                             read_sphinx_corpus, split_summary, synthetic_corpus)

__all__ = ["ASRAugmentConfig", "AudioAssembler", "DIGIT_WORDS", "MANIFEST_COLUMNS", "SENTENCE_WORDS", "SYNTHETIC_FORMAT",
           "SyntheticASRConfig", "augment_waveform", "check_manifest", "default_cache_dir", "encode_targets",
           "file_rows", "fsdd_connected_digits", "make_asr_dataset", "mel_warp", "read_librispeech",
           "read_sphinx_corpus", "spec_augment", "split_summary", "synthetic_corpus"]
