"""A LiteRT ``.tflite`` KWS model over long feature streams: the interface of
:class:`kws_quant.models.StreamingRunner` (``window``, ``n_mels``, ``hop``, ``posteriors``), as on the device, so a
streaming DET can score the deployed int8 file itself: :class:`LiteRTStreamingRunner` runs a window model once per
window, :class:`LiteRTStatefulRunner` a zoo model's streaming export
(:func:`~kws_quant.export.tflite.to_tflite_streaming`) once per hop, its int8 state fed back."""
from __future__ import annotations

import numpy as np

import json

from kws_quant.export.tflite import LiteRTStreamingModel, make_interpreter, run_tflite
from kws_quant.export.tflite.stream_export import stream_metadata_path
from kws_quant.models.streaming import stream_features


class LiteRTStreamingRunner:
    """Slide a ``.tflite`` window model (float input ``[1, window, n_mels]``, or an int8 one that
    :func:`~kws_quant.export.tflite.run_tflite` quantizes) over ``[frames, n_mels]`` streams at ``hop_frames``.

    Args:
        path: the ``.tflite`` file (a full model: its input is log-mel windows, not a split front end's codes).
        hop_frames: frames between consecutive windows.
        chunk: windows materialised at a time (memory: ``chunk × window × n_mels × 4`` bytes).
    """

    def __init__(self, path: str, hop_frames: int = 1, chunk: int = 2048, num_threads: int = 1):
        if hop_frames < 1 or chunk < 1:
            raise ValueError(f"hop_frames={hop_frames} and chunk={chunk} must be positive")
        self.path, self.hop, self.chunk = str(path), int(hop_frames), int(chunk)
        self._interp = make_interpreter(self.path, num_threads=num_threads)
        shape = self._interp.get_input_details()[0]["shape"]
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"{self.path}: input shape {list(shape)} is not one window [1, frames, n_mels]")
        _, self.window, self.n_mels = (int(v) for v in shape)
        self.num_classes = int(self._interp.get_output_details()[0]["shape"][-1])

    def posteriors(self, features: np.ndarray) -> np.ndarray:
        """Class posteriors (softmax of the dequantized logits) ``[num_windows, classes]``; window ``i`` ends at
        frame ``i * hop + window - 1`` (a stream shorter than a window is front-padded with its minimum)."""
        feats = stream_features(features, self.window, self.n_mels)
        windows = np.lib.stride_tricks.sliding_window_view(feats, self.window, axis=0)[::self.hop]  # [n, mels, win]
        out = []
        for start in range(0, len(windows), self.chunk):
            batch = np.ascontiguousarray(windows[start:start + self.chunk].transpose(0, 2, 1))
            logits = run_tflite(None, batch, interpreter=self._interp)
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            out.append(z / z.sum(axis=1, keepdims=True))
        return np.concatenate(out).astype(np.float32)


class LiteRTStatefulRunner:
    """Run a streaming ``.tflite`` (:func:`~kws_quant.export.tflite.to_tflite_streaming`, with its
    ``<name>.stream.json``) over ``[frames, n_mels]`` streams one hop per invoke from the zero state, with the
    interface of :class:`kws_quant.models.stream_state.StatefulStreamingRunner`: output ``i`` is the posterior at
    the step whose hop ends window ``i`` (ending at frame ``i * hop + window - 1``)."""

    def __init__(self, path: str, num_threads: int = 1):
        self.path = str(path)
        with open(stream_metadata_path(self.path), encoding="utf-8") as f:
            meta = json.load(f)
        self.model = LiteRTStreamingModel(self.path, num_threads=num_threads)
        self.window, self.hop, self.n_mels = int(meta["window"]), self.model.hop, self.model.n_mels
        self.num_classes = self.model.num_classes
        self.mode = "stateful"  # what the streaming DET's table says about how the streams ran

    def posteriors(self, features: np.ndarray) -> np.ndarray:
        """Class posteriors (softmax of the dequantized logits) ``[num_windows, classes]``."""
        feats = stream_features(features, self.window, self.n_mels)
        offset = self.window % self.hop
        steps = (len(feats) - offset) // self.hop
        logits = self.model.run(feats[offset:offset + steps * self.hop].reshape(steps, self.hop, self.n_mels))
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True))[(self.window - offset) // self.hop - 1:].astype(np.float32)

    def end_frames(self, num_windows: int) -> np.ndarray:
        """Index of the last frame of each output's window, ``[num_windows]``."""
        return np.arange(num_windows) * self.hop + self.window - 1
