"""The main job: synthetic "hey computer" KWS, float model + 4-bit tanh two-stage QAT twin (METHODS §1-3)."""
from kws_quant.config_defaults import kws_config as base_config


def get_config():
    config = base_config()
    config.name = "kws_synthetic"
    config.data.source = "synthetic"
    config.data.synthetic.unknown_clips = 2400  # twice the default non-keyword clips: hard negatives for streaming
    config.train.float_epochs = 20
    config.train.stage1_epochs = 5
    config.train.stage2_epochs = 5
    return config
