"""The default ASR job: RNN-T on the built-in eSpeak NG corpus (digit strings and short sentences, 24 voices,
voice-disjoint test), float model + 4-bit tanh two-stage QAT twin. No dataset needed."""
from asr_ext.experiments.asr import asr_config


def get_config():
    config = asr_config()
    config.name = "asr_synthetic"
    config.data.source = "synthetic"
    return config
