"""Connected digits from the Free Spoken Digit Dataset (real speech, 8 kHz), speaker-independent test.

Utterances of 2-5 digits by one speaker with 50-300 ms gaps; train on george, nicolas and yweweler (10 % of their
recordings held out to build validation utterances), test on jackson, never heard in training. Features at the
recordings' own 8 kHz, clamped to a 40 dB dynamic range below each utterance's maximum (the four speakers'
recordings have very different noise floors, and the gaps are digital silence). Model: 2 x 160 LSTM encoder at a
60 ms frame rate (3 stacked frames, then 2). Run with --data_dir=../shared/data/fsdd; docs/asr_fsdd.md has the
measured WER and the command.
"""
from asr_ext.experiments.asr import asr_config


def get_config():
    config = asr_config()
    config.name = "asr_fsdd"
    config.data.source = "fsdd"
    config.data.dynamic_range_db = 40.0
    config.features.sample_rate = 8000
    config.features.n_fft = 256
    config.features.fmin = 20.0
    config.model.frame_stack = 3
    config.model.lstm_units = (160, 160)
    config.model.dropout = 0.2
    config.augment.mel_warp = (0.85, 1.15)
    config.train.float_epochs = 10
    config.train.stage1_epochs = 2
    config.train.stage2_epochs = 2
    return config
