"""CMU AN4 ("census") with an RNN-T: spelled names, digit strings, dates and commands from 74 speakers (real speech,
16 kHz). Run with --data_dir=../shared/data/an4 (or a copy with NIST SPHERE ``.sph`` audio: the same reader).

The shared folder holds AN4's training set only, so speakers are split 70 / 10 / 20 % of the files (speaker-disjoint:
the test split is 15 speakers never heard in training; the validation split only monitors training). Output:
characters (lower-case letters, space, apostrophe), the same vocabulary as every ASR config: AN4's ~100 words include
spelled letters ("r u b e n") and digits, which a word vocabulary would treat as closed-set tokens without helping
the acoustic confusions (b/d/e/p/t) that dominate its errors. Model: 2 x 128 LSTM encoder at a 40 ms frame rate
(2 stacked frames, then 2), dropout 0.3 and 3 time masks: with 0.49 h of training speech a 2 x 192 encoder with
dropout 0.2 learnt the prompts' word sequences instead of the acoustics (validation loss flat from epoch 15, WER 95 %;
docs/asr_an4.md). One float model, a tanh 4-bit twin, then every ASR quantization method (one phase each, initialised
from the float model), and a float and a native 4-bit Conformer.
"""
from asr_ext.experiments.asr import asr_config


def get_config():
    config = asr_config()
    config.name = "asr_an4"
    config.data.source = "sphinx"
    config.data.sphinx.fractions = (0.7, 0.1, 0.2)
    config.data.batch_size = 16
    config.model.lstm_units = (128, 128)
    config.model.dropout = 0.3
    config.augment.mel_warp = (0.9, 1.1)
    config.augment.time_masks = 3
    config.train.float_epochs = 60
    config.train.stage1_epochs = 3
    config.train.stage2_epochs = 3
    config.qat.recipes = ("tanh4",)
    config.qat.methods = ("s8bqat5", "gq5", "gq4", "gq_mixed14", "native4_conformer", "nna8")
    config.model.conformer_dim = 96
    config.train.other_float_epochs = 30     # the float Conformer (phase float_conformer)
    config.qat.nna.stage_epochs = (0, 1)
    config.decode.beam_size = 4
    return config
