"""Speech Commands, 12 classes (the field's standard KWS task): ``yes no up down left right on off stop go``,
``_unknown_`` (every other word) and ``_silence_``. Run with --data_dir=../shared/data/speech_commands (the v0.02
canonical test archive: 3,882 clips, 226 speakers) or a full Speech Commands folder.

Without list files the split is speaker-disjoint by a hash of the speaker id (65 / 25 / 10 % of the files: 40
validation and 23 test speakers on the shared folder); with ``validation_list.txt``/``testing_list.txt`` those lists
decide. Training uses the Speech Commands recipe: ``_background_noise_`` mixed in at a random SNR (10-30 dB), random
gain, time shift (docs/kws_speech_commands.md has the calibration runs behind these settings). Phases: a float model, a 4-bit post-training baseline (the float weights rounded, no QAT),
then one two-stage QAT twin per weight width (tanh 8/5/4/1 bits).
"""
from kws_quant.config_defaults import kws_config as base_config


def get_config():
    config = base_config()
    config.name = "kws_speech_commands"
    config.data.source = "speech_commands"
    config.data.keywords = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    config.data.split_fractions = (0.65, 0.25, 0.10)
    config.data.snr_db = (10.0, 30.0)     # lighter than (0, 20) dB with speed 0.9-1.1: 0.77 vs 0.75 (docs)
    config.data.batch_size = 32
    config.train.float_epochs = 150
    config.train.stage1_epochs = 10
    config.train.stage2_epochs = 10
    config.qat.recipes = ("tanh8", "tanh5", "tanh4", "tanh1")
    config.qat.ptq_recipes = ("tanh4",)     # what QAT buys: the float weights rounded to 4 bits, no training
    config.report.dataset_noise = True      # streams over _background_noise_, 20 dB below the speech
    return config
