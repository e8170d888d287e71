"""FSDD connected digits: the quantization methods side by side (docs/asr_methods.md has the table and commands).

Data, features, the LSTM RNN-T and its 10-epoch float training are those of configs/asr_fsdd.py (so a finished
float phase of that config can be reused); then one phase per method, each initialised from the float model, 1 epoch
with weights quantized + 1 epoch fully quantized: 8-bit linear QAT, S8BQAT 5-bit, GQ 5-bit and 4-bit, GQ mixed 1/4-bit (the
second encoder LSTM, half of the weights, at 1 bit) and NNA-emulated int8 (1 fully emulated epoch: its integer LSTM
is ~5x slower per step); and a native 4-bit Conformer (2 x 64-wide blocks) fine-tuned from a float Conformer trained
6 epochs on the same data. Greedy decoding only. Run with --data_dir=../shared/data/fsdd.
"""
import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "asr_fsdd.py")
    spec = importlib.util.spec_from_file_location("asr_fsdd_config", path)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    config = base.get_config()
    config.name = "asr_fsdd_methods"
    config.qat.recipes = ()
    config.qat.methods = ("linear8", "s8bqat5", "gq5", "gq4", "gq_mixed14", "native4_conformer", "nna8")
    config.train.stage1_epochs = 1
    config.train.stage2_epochs = 1
    config.model.conformer_dim = 64         # 2 blocks, 4 heads, kernel 15
    config.train.other_float_epochs = 6     # the float Conformer (phase float_conformer)
    config.qat.nna.stage_epochs = (0, 1)
    config.decode.beam_size = 0
    return config
