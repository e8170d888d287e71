"""Google Speech Commands layout (label folders, validation_list.txt/testing_list.txt, _background_noise_):
"yes"/"no" keywords, everything else _unknown_. Run with --data_dir=/path/to/speech_commands."""
from kws_quant.config_defaults import kws_config as base_config


def get_config():
    config = base_config()
    config.name = "kws_speech_commands"
    config.data.source = "speech_commands"
    config.data.keywords = ("yes", "no")
    config.train.float_epochs = 20
    config.train.stage1_epochs = 8
    config.train.stage2_epochs = 8
    return config
