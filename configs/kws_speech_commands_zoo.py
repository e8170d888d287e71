"""Speech Commands, 12 classes, with a streaming zoo model (default TC-ResNet; --config.model.arch=dscnn|crnn).

The task, split (speaker-disjoint 65 / 25 / 10 %), augmentation and report are those of
``configs/kws_speech_commands.py``; the model is a ~200K-parameter streaming convolutional (or recurrent) model that
runs frame-synchronously with state in the streaming evaluation (``kws_quant.models.stream_state``). Phases: float
(80 epochs: the validation accuracy stops rising by then, docs/models.md), a 4-bit post-training baseline, and
two-stage QAT twins at tanh 8/5/4 bits. Each QAT phase exports its streaming int8 LiteRT model
(``kws_quant.export.deployment``: ``<phase>/export/stream_int8.tflite``, checked step by step against the Keras
streaming model on the test clips); the CRNN's LSTM keeps its h/c state in float32 and its projections hybrid (int8
weights), and it has no separate window file (its window is its stream over the window's hops).
"""
import importlib.util
import os


def _speech_commands_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kws_speech_commands.py")
    spec = importlib.util.spec_from_file_location("kws_speech_commands_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _speech_commands_config()
    config.name = "kws_speech_commands_zoo"
    config.model.arch = "tcresnet"
    config.model.hidden = ()              # the arch's default widths (kws_quant.models.zoo.ARCH_DEFAULTS)
    config.train.float_epochs = 80
    config.qat.recipes = ("tanh8", "tanh5", "tanh4")
    return config
