"""RNN-T model (Graves 2012) built from a quantization recipe: encoder (stacked LSTM with time reduction, or a small
Conformer), prediction network (one-hot → embedding → LSTM) and joint network (dense + dense → tanh → dense to V).

``build_rnnt(config, vocab_size, recipe)`` returns one Functional Keras model:

    inputs  {"features": [B, T, n_mels] float32, "feature_lengths": [B] int32, "labels": [B, U] int32}
    output  logits [B, T', U+1, V]     with T' = encoder_lengths(config, T)

``labels`` are the label ids (padding after each utterance's length is ignored); the prediction network sees
``[blank, y_1 .. y_U]``. Train with ``asr_ext.rnnt_loss.RNNTLoss`` on ``rnnt_targets(labels, T'_b, U_b)``.

Recipe roles (:mod:`kws_quant.models.recipes`) map to the layers as in the KWS model: ``kernel`` → every
``QuantDense``/``QuantConv1D``/``QuantLSTM`` (input *and* recurrent kernel)/``QuantDepthwiseConv1D`` kernel,
``bias`` → their biases, ``input`` → ``input_quant`` (the features), ``output`` → every quantized non-linearity
output (LSTM outputs, ReLU/swish projections, the joint's tanh), ``gain``/``offset`` → the Conformer's
batch-norms. LayerNorms, attention softmax and residual sums stay float.

Layer names (for per-layer overrides): ``input_quant`` (after ``input_mask``); LSTM encoder ``enc_lstm_<i>``
(``stack_in``, ``stack_<i>`` reductions); Conformer ``conv_sub_<i>``, ``conf_proj``, ``conf<b>_{ff1_in,ff1_out,att_q,
att_k,att_v,att_out,conv_pw1,conv_dw,conv_bn,conv_act,conv_pw2,ff2_in,ff2_out}``; prediction network ``pred_embed``,
``pred_lstm_<i>``; joint ``joint_enc``, ``joint_pred``, ``joint_act``, ``joint_out``.
"""
from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np

from asr_ext.models.layers import (GLU, FrameStack, JointCombine, MaskedSelfAttention, PredictorInput, ReduceLengths,
                                   SequenceMask, SinusoidalPosition, reduced_length)
from kws_quant.layers import (QuantActivation, QuantBatchNormalization, QuantConv1D, QuantDense, QuantDepthwiseConv1D,
                              QuantLSTM)
from kws_quant.models.recipes import check_patterns_match, get_recipe, quantizer_kwargs, spec_for

ENCODERS = ("lstm", "conformer")


@dataclasses.dataclass
class RNNTConfig:
    """Architecture of an RNN-T model.

    Attributes:
        n_mels: feature size per frame.
        encoder: ``"lstm"`` or ``"conformer"``.
        frame_stack: (lstm) stack and subsample this many input frames before the first LSTM.
        lstm_units: (lstm) width of each encoder LSTM layer.
        reduce_after: (lstm) indices of LSTM layers after which ``reduce_factor`` frames are stacked.
        reduce_factor: (lstm) the stacking factor of those reductions.
        conformer_dim, conformer_blocks, conformer_heads, conformer_ff_mult, conformer_kernel: (conformer) model
            width, number of blocks, attention heads, feed-forward expansion, depthwise kernel size. The front end
            is two stride-2 convolutions (time reduction 4).
        embed_dim: prediction-network embedding size.
        pred_units: width of each prediction-network LSTM layer.
        joint_units: joint-network hidden size.
        dropout: dropout rate in training (encoder, prediction network).
    """

    n_mels: int = 40
    encoder: str = "lstm"
    frame_stack: int = 2
    lstm_units: tuple = (256, 256)
    reduce_after: tuple = (0,)
    reduce_factor: int = 2
    conformer_dim: int = 144
    conformer_blocks: int = 2
    conformer_heads: int = 4
    conformer_ff_mult: int = 4
    conformer_kernel: int = 15
    embed_dim: int = 64
    pred_units: tuple = (256,)
    joint_units: int = 256
    dropout: float = 0.1

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"model encoder={self.encoder!r} is not allowed; allowed: {', '.join(ENCODERS)}")
        for name in ("n_mels", "frame_stack", "reduce_factor", "conformer_dim", "conformer_blocks",
                     "conformer_heads", "conformer_ff_mult", "conformer_kernel", "embed_dim", "joint_units"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"model {name}={v!r} must be a positive integer")
        self.lstm_units = tuple(int(u) for u in self.lstm_units)
        self.pred_units = tuple(int(u) for u in self.pred_units)
        self.reduce_after = tuple(int(i) for i in self.reduce_after)
        for name in ("lstm_units", "pred_units"):
            units = getattr(self, name)
            if not units or min(units) <= 0:
                raise ValueError(f"model {name}={units!r} must be a non-empty list of positive widths")
        bad = [i for i in self.reduce_after if not 0 <= i < len(self.lstm_units)]
        if bad:
            raise ValueError(f"model reduce_after={self.reduce_after!r}: index {bad[0]} is not an encoder LSTM layer "
                             f"(0..{len(self.lstm_units) - 1})")
        if self.conformer_dim % self.conformer_heads:
            raise ValueError(f"model conformer_dim={self.conformer_dim} must be divisible by "
                             f"conformer_heads={self.conformer_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model dropout={self.dropout!r} must be in [0, 1)")

    @property
    def reduction_factors(self) -> tuple:
        """The encoder's successive time reductions (each ``ceil(T / k)``)."""
        if self.encoder == "conformer":
            return (2, 2)
        return (self.frame_stack,) + (self.reduce_factor,) * len(set(self.reduce_after))

    @property
    def time_reduction(self) -> int:
        return int(np.prod(self.reduction_factors))


def encoder_lengths(config: RNNTConfig, feature_lengths):
    """Encoder frames (logit lengths T'_b) for ``feature_lengths`` frames (numpy or tensor)."""
    out = feature_lengths
    for k in config.reduction_factors:
        out = reduced_length(out, k)
    return out


def build_rnnt(config: RNNTConfig, vocab_size: int, recipe="float", name: str = "rnnt", blank: int = 0):
    """Build the RNN-T (see the module docstring). ``recipe``: a preset name or a recipe dict."""
    recipe = get_recipe(recipe)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= 2 (blank plus at least one label)")
    if not 0 <= blank < vocab_size:
        raise ValueError(f"blank={blank!r} must be in [0, vocab_size={vocab_size})")

    q = functools.partial(quantizer_kwargs, recipe)  # q(layer name, *roles) -> <role>_quantizer kwargs

    features = keras.Input((None, config.n_mels), name="features")
    lengths = keras.Input((), dtype="int32", name="feature_lengths")
    labels = keras.Input((None,), dtype="int32", name="labels")
    x = SequenceMask(name="input_mask")([features, lengths])  # padding values never reach the model
    x = QuantActivation(name="input_quant", quantizer=spec_for(recipe, "input_quant", "input"))(x)
    if config.encoder == "lstm":
        enc, enc_lengths = _lstm_encoder(x, lengths, config, q)
    else:
        enc, enc_lengths = _conformer_encoder(x, lengths, config, q, recipe)
    enc = SequenceMask(name="enc_mask")([enc, enc_lengths])

    y = PredictorInput(vocab_size, blank, name="pred_input")(labels)
    y = QuantDense(config.embed_dim, use_bias=False, name="pred_embed", **q("pred_embed", "kernel"))(y)
    for i, units in enumerate(config.pred_units):
        lname = f"pred_lstm_{i}"
        y = QuantLSTM(units, name=lname, **q(lname, "kernel", "bias", "output"))(y)
        if config.dropout:
            y = keras.layers.Dropout(config.dropout, name=f"pred_dropout_{i}")(y)

    je = QuantDense(config.joint_units, name="joint_enc", **q("joint_enc", "kernel", "bias"))(enc)
    jp = QuantDense(config.joint_units, use_bias=False, name="joint_pred", **q("joint_pred", "kernel"))(y)
    z = JointCombine(name="joint_add")([je, jp])
    z = QuantActivation("tanh", name="joint_act", quantizer=spec_for(recipe, "joint_act", "output"))(z)
    logits = QuantDense(vocab_size, name="joint_out", **q("joint_out", "kernel", "bias"))(z)
    model = keras.Model({"features": features, "feature_lengths": lengths, "labels": labels}, logits, name=name)
    check_patterns_match(recipe, [layer.name for layer in model.layers])
    return model


def _lstm_encoder(x, lengths, config, q):
    x = FrameStack(config.frame_stack, name="stack_in")(x)
    lengths = ReduceLengths(config.frame_stack, name="stack_in_lengths")(lengths)
    for i, units in enumerate(config.lstm_units):
        lname = f"enc_lstm_{i}"
        x = QuantLSTM(units, name=lname, **q(lname, "kernel", "bias", "output"))(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"enc_dropout_{i}")(x)
        if i in config.reduce_after:
            x = SequenceMask(name=f"enc_mask_{i}")([x, lengths])  # stacked frames must not mix in padding
            x = FrameStack(config.reduce_factor, name=f"stack_{i}")(x)
            lengths = ReduceLengths(config.reduce_factor, name=f"stack_{i}_lengths")(lengths)
    return x, lengths


def _conformer_encoder(x, lengths, config, q, recipe):
    d, drop = config.conformer_dim, config.dropout

    def dense(v, units, lname, activation=None):
        roles = ("kernel", "bias", *(("output",) if activation else ()))
        return QuantDense(units, activation=activation, name=lname, **q(lname, *roles))(v)

    def dropout(v, lname):
        return keras.layers.Dropout(drop, name=lname)(v) if drop else v

    def residual(v, y, lname, scale=1.0):
        if scale != 1.0:
            y = keras.layers.Rescaling(scale, name=f"{lname}_scale")(y)
        return keras.layers.Add(name=f"{lname}_res")([v, y])

    for i in range(2):  # convolutional subsampling, time reduction 4
        lname = f"conv_sub_{i}"
        x = QuantConv1D(d, 3, strides=2, padding="same", activation="relu", name=lname,
                        **q(lname, "kernel", "bias", "output"))(x)
        lengths = ReduceLengths(2, name=f"conv_sub_{i}_lengths")(lengths)
        x = SequenceMask(name=f"conv_sub_{i}_mask")([x, lengths])
    x = dense(x, d, "conf_proj")
    x = SinusoidalPosition(name="conf_pos")(x)
    x = dropout(x, "conf_dropout")
    for b in range(config.conformer_blocks):
        p = f"conf{b}"

        def ffn(v, tag):
            y = keras.layers.LayerNormalization(name=f"{p}_{tag}_norm")(v)
            y = dense(y, d * config.conformer_ff_mult, f"{p}_{tag}_in", activation="swish")
            y = dropout(y, f"{p}_{tag}_dropout")
            y = dense(y, d, f"{p}_{tag}_out")
            return residual(v, y, f"{p}_{tag}", 0.5)

        x = ffn(x, "ff1")
        y = keras.layers.LayerNormalization(name=f"{p}_att_norm")(x)
        qkv = [dense(y, d, f"{p}_att_{t}") for t in "qkv"]
        y = MaskedSelfAttention(config.conformer_heads, name=f"{p}_att")([*qkv, lengths])
        y = dropout(dense(y, d, f"{p}_att_out"), f"{p}_att_dropout")
        x = residual(x, y, f"{p}_att")
        y = keras.layers.LayerNormalization(name=f"{p}_conv_norm")(x)
        y = QuantConv1D(2 * d, 1, name=f"{p}_conv_pw1", **q(f"{p}_conv_pw1", "kernel", "bias"))(y)
        y = GLU(name=f"{p}_conv_glu")(y)
        y = SequenceMask(name=f"{p}_conv_mask")([y, lengths])  # padding must not leak into the depthwise conv
        y = QuantDepthwiseConv1D(config.conformer_kernel, use_bias=False, name=f"{p}_conv_dw",
                                 **q(f"{p}_conv_dw", "kernel"))(y)
        y = QuantBatchNormalization(name=f"{p}_conv_bn", **q(f"{p}_conv_bn", "gain", "offset"))(y)
        y = QuantActivation("swish", name=f"{p}_conv_act", quantizer=spec_for(recipe, f"{p}_conv_act",
                                                                              "output"))(y)
        y = QuantConv1D(d, 1, name=f"{p}_conv_pw2", **q(f"{p}_conv_pw2", "kernel", "bias"))(y)
        x = residual(x, dropout(y, f"{p}_conv_dropout"), f"{p}_conv")
        x = ffn(x, "ff2")
        x = keras.layers.LayerNormalization(name=f"{p}_norm")(x)
    return x, lengths
