"""Free Spoken Digit Dataset (real speech, 8 kHz): ten digit classes, speaker-independent test.

Train on george, nicolas and yweweler (10 % of their clips held out for validation), test on jackson, who is never
seen in training. Features at the recordings' own 8 kHz rate. A float model, then one two-stage QAT twin per
weight width (tanh 8/5/4/1 bits). Run with --data_dir=../shared/data/fsdd.
"""
from kws_quant.config_defaults import kws_config


def get_config():
    config = kws_config()
    config.name = "kws_fsdd"
    config.data.source = "fsdd"
    config.data.keywords = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    config.data.test_speakers = ("jackson",)
    config.data.validation_fraction = 0.1
    config.data.speed = (0.85, 1.15)
    config.data.snr_db = (10.0, 30.0)
    config.features.sample_rate = 8000
    config.features.n_fft = 256
    config.features.fmin = 20.0
    config.train.float_epochs = 40
    config.train.stage1_epochs = 10
    config.train.stage2_epochs = 10
    config.qat.recipes = ("tanh8", "tanh5", "tanh4", "tanh1")  # one two-stage QAT twin per weight width
    return config
