"""RNN-T models on the shared quantized layers (:mod:`kws_quant.layers`; ``QuantLSTM`` and ``QuantDepthwiseConv1D`` are
re-exported here): the LSTM/Conformer RNN-T (:func:`build_rnnt`)
and the weightless helper layers. Importing this package registers every layer with Keras (needed before
``keras.saving.load_model`` reads an RNN-T ``.keras`` file)."""
from asr_ext.models.layers import (GLU, FrameStack, JointCombine, MaskedSelfAttention, PredictorInput, ReduceLengths,
                                   SequenceMask, SinusoidalPosition, reduced_length)
from asr_ext.models.rnnt import ENCODERS, RNNTConfig, build_rnnt, encoder_lengths
from asr_ext.models.schedules import WarmupCosine
from kws_quant.layers import QuantDepthwiseConv1D, QuantLSTM

__all__ = ["ENCODERS", "GLU", "FrameStack", "JointCombine", "MaskedSelfAttention", "PredictorInput",
           "QuantDepthwiseConv1D", "QuantLSTM", "RNNTConfig", "ReduceLengths", "SequenceMask", "SinusoidalPosition",
           "WarmupCosine", "build_rnnt", "encoder_lengths", "reduced_length"]
