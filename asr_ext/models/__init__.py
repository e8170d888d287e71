"""RNN-T models on the shared quantized layers: :class:`QuantLSTM`, the LSTM/Conformer RNN-T (:func:`build_rnnt`)
and the weightless helper layers. Importing this package registers every layer with Keras (needed before
``keras.saving.load_model`` reads an RNN-T ``.keras`` file)."""
from asr_ext.models.layers import (GLU, FrameStack, JointCombine, MaskedSelfAttention, PredictorInput,
                                   QuantDepthwiseConv1D, ReduceLengths, SequenceMask, SinusoidalPosition,
                                   reduced_length)
from asr_ext.models.lstm import QuantLSTM
from asr_ext.models.rnnt import ENCODERS, RNNTConfig, build_rnnt, encoder_lengths
from asr_ext.models.schedules import WarmupCosine

__all__ = ["ENCODERS", "GLU", "FrameStack", "JointCombine", "MaskedSelfAttention", "PredictorInput",
           "QuantDepthwiseConv1D", "QuantLSTM", "RNNTConfig", "ReduceLengths", "SequenceMask", "SinusoidalPosition",
           "WarmupCosine", "build_rnnt", "encoder_lengths", "reduced_length"]
