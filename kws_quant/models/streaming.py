"""Run a window-level KWS model over long feature streams: the same model on a sliding window, batched."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def stream_features(features, window: int, n_mels: int) -> np.ndarray:
    """float32 ``[frames, n_mels]`` checked, and front-padded with its minimum to one ``window`` when shorter: what
    every window runner slides over."""
    feats = np.asarray(features, np.float32)
    if feats.ndim != 2 or feats.shape[1] != n_mels:
        raise ValueError(f"features must have shape [frames, {n_mels}], got {feats.shape}")
    if len(feats) < window:
        feats = np.concatenate([np.full((window - len(feats), n_mels), feats.min(initial=0.0), np.float32), feats])
    return feats


class StreamingRunner:
    """Slide ``model`` over ``[frames, n_mels]`` feature streams at a hop of ``hop_frames``.

    The model is state-free, so streaming is exactly the model applied to every window; windows are built on the
    fly per chunk (``tf.signal.frame``) so an hour of audio never materialises as one array of windows.

    Args:
        model: Keras model, input ``[batch, window, n_mels]``, output logits ``[batch, classes]``.
        hop_frames: frames between consecutive windows (1 = every frame).
        batch_size: windows per model call.
        jit_compile: XLA-compile the framing + model function.
    """

    def __init__(self, model, hop_frames: int = 1, batch_size: int = 2048, jit_compile: bool = False):
        if hop_frames < 1 or batch_size < 1:
            raise ValueError(f"hop_frames={hop_frames} and batch_size={batch_size} must be positive")
        _, self.window, self.n_mels = model.input_shape
        self.hop, self.batch_size = int(hop_frames), int(batch_size)
        self._model = model
        spec = tf.TensorSpec([None, self.n_mels], tf.float32)
        self._run = tf.function(self._chunk, input_signature=[spec], reduce_retracing=True, jit_compile=jit_compile)

    def _chunk(self, feats):
        windows = tf.signal.frame(feats, self.window, self.hop, axis=0)
        return tf.nn.softmax(self._model(windows, training=False), axis=-1)

    def posteriors(self, features: np.ndarray) -> np.ndarray:
        """Class posteriors ``[num_windows, classes]`` of one stream; window ``i`` ends at frame
        ``i * hop + window - 1``. A stream shorter than one window is zero-padded at the front to one window."""
        feats = stream_features(features, self.window, self.n_mels)
        num = (len(feats) - self.window) // self.hop + 1
        out = []
        span = (self.batch_size - 1) * self.hop + self.window
        for start in range(0, num, self.batch_size):
            chunk = feats[start * self.hop:start * self.hop + span]
            if len(chunk) < span:  # one shape for every call: XLA compiles once
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], span - len(chunk), axis=0)])
            out.append(self._run(tf.constant(chunk)).numpy()[:num - start])
        return np.concatenate(out)

    def end_frames(self, num_windows: int) -> np.ndarray:
        """Index of the last frame of each window, ``[num_windows]``."""
        return np.arange(num_windows) * self.hop + self.window - 1
