"""Learning-rate schedule of the ASR recipes (registered, so a compiled ``.keras`` RNN-T loads with it)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="asr_ext")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``alpha·peak`` at ``total_steps``."""

    def __init__(self, peak, warmup_steps, total_steps, alpha=0.05):
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)
        self.total_steps, self.alpha = max(int(total_steps), 1), float(alpha)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = self.peak * (self.alpha + (1.0 - self.alpha) * 0.5 * (1.0 + tf.cos(np.pi * progress)))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "alpha": self.alpha}
