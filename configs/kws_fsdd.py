"""Free Spoken Digit Dataset (real speech): ten digit classes, speaker-disjoint (train george+nicolas+yweweler with
validation held out per speaker-free split, test jackson). Run with --data_dir=../shared/data/fsdd."""
from kws_quant.config_defaults import kws_config as base_config


def get_config():
    config = base_config()
    config.name = "kws_fsdd"
    config.data.source = "fsdd"
    config.data.keywords = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    config.data.validation_speakers = ("nicolas",)
    config.data.test_speakers = ("jackson",)
    config.data.clip_seconds = 1.0
    config.train.float_epochs = 30
    config.train.stage1_epochs = 10
    config.train.stage2_epochs = 10
    return config
