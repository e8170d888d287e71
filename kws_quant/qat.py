"""Two-stage quantization-aware training schedule (METHODS §3).

Stage 0: float. Stage 1: weight quantizers (kernels) on. Stage 2: also inputs, activations, biases and batch-norm.
The stage is an integer variable on each quantized layer, so switching it inside ``model.fit`` needs no rebuild or
recompile, and it is saved with the weights: a checkpoint resumes in its stage.
"""
from __future__ import annotations

import keras
import numpy as np

from kws_quant.layers import quant_layers

STAGES = (0, 1, 2)


def set_stage(model, stage: int) -> None:
    """Set every quantized layer of ``model`` to ``stage`` (0, 1 or 2)."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not allowed; allowed: {STAGES}")
    for layer in quant_layers(model):
        if layer.qat_stage is not None:
            layer.qat_stage.assign(stage)


def get_stage(model) -> int | None:
    """The stage of ``model``'s quantized layers (``None`` when it has none); raises if they disagree."""
    stages = {int(np.asarray(layer.qat_stage)) for layer in quant_layers(model) if layer.qat_stage is not None}
    if len(stages) > 1:
        raise ValueError(f"the model's quantized layers are in different stages {sorted(stages)}; "
                         "call kws_quant.qat.set_stage(model, stage)")
    return stages.pop() if stages else None


class TwoStageQAT(keras.callbacks.Callback):
    """Switch float → stage 1 → stage 2 at configured epochs or optimizer steps.

    Args:
        stage1_at: first epoch (or step) of stage 1; 0 skips float pre-training.
        stage2_at: first epoch (or step) of stage 2; ``None`` never enters stage 2.
        unit: ``"epoch"`` (``on_epoch_begin``, epochs as ``fit`` counts them, ``initial_epoch`` included) or
            ``"step"`` (``optimizer.iterations``, which a restored checkpoint carries).
        verbose: print each switch.

    The stage for a position is a pure function of it, so a resumed run lands in the right stage.
    """

    def __init__(self, stage1_at: int = 0, stage2_at: int | None = None, unit: str = "epoch", verbose: bool = True):
        super().__init__()
        if unit not in ("epoch", "step"):
            raise ValueError(f"TwoStageQAT: unit={unit!r} is not allowed; allowed: 'epoch', 'step'")
        for name, v in (("stage1_at", stage1_at), ("stage2_at", stage2_at)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"TwoStageQAT: {name}={v!r} must be a non-negative integer")
        if stage2_at is not None and stage2_at < stage1_at:
            raise ValueError(f"TwoStageQAT: stage2_at={stage2_at} comes before stage1_at={stage1_at}")
        self.stage1_at, self.stage2_at, self.unit, self.verbose = stage1_at, stage2_at, unit, verbose
        self._current = None
        self._step = 0
        self.history: list[tuple[int, int]] = []
        """``(position, stage)`` for every switch made, in order."""

    def stage_at(self, position: int) -> int:
        if self.stage2_at is not None and position >= self.stage2_at:
            return 2
        return 1 if position >= self.stage1_at else 0

    def _apply(self, position: int) -> None:
        stage = self.stage_at(position)
        if stage != self._current:
            set_stage(self.model, stage)
            self._current = stage
            self.history.append((position, stage))
            if self.verbose:
                print(f"\n[TwoStageQAT] {self.unit} {position}: stage {stage}")

    def on_train_begin(self, logs=None):
        self._current = None
        if self.unit == "step":
            self._step = int(np.asarray(self.model.optimizer.iterations))
            self._apply(self._step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            self._apply(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1


def calibrate(model, windows, stage: int = 2) -> None:
    """Post-training calibration: set every moving-average range of ``model`` to the min/max of one inference pass
    over ``windows`` (a representative batch, e.g. 1,000 training windows; the range TFLite's converter takes from a
    representative dataset), then put the model in ``stage``.

    The pass runs eagerly in inference mode (dropout off, batch-norm on its moving statistics) at QAT stage 1, so the
    activations are those of the quantized weights and float activations.
    """
    layers = quant_layers(model)
    set_stage(model, 1)
    for layer in layers:
        layer.reset_ranges()
        layer.calibrating = True
    try:
        model(np.asarray(windows, np.float32), training=False)
    finally:
        for layer in layers:
            layer.calibrating = False
    set_stage(model, stage)
