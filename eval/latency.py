"""Detection latency of a streaming keyword detector: keyword end → trigger, at one threshold."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eval.streaming import Stream, detect


def detection_latencies(streams: Sequence[Stream], column: int, keyword, threshold: float, *, hop_s: float,
                        smoothing_s: float = 0.0, refractory_s: float = 0.0, tolerance_s: float = 0.0) -> np.ndarray:
    """Seconds from the end of each detected occurrence of ``keyword`` to its first detection, ``[hits]``.

    An occurrence ``(start, end, keyword)`` is detected when a detection (:func:`eval.streaming.detect` at
    ``threshold``, same smoothing and refractory period as the DET) falls in ``[start, end + tolerance_s]``, the
    window that counts as a hit in :func:`eval.det.evaluate_streams`; negative values: the detector fired before the
    keyword ended. ``column``: the keyword's score column.
    """
    out = []
    for stream in streams:
        events = [(float(s), float(e)) for s, e, k in stream.events if k == keyword]
        if not events:
            continue
        times = detect(np.asarray(stream.scores)[:, column], hop_s, threshold, smoothing_s=smoothing_s,
                       refractory_s=refractory_s)
        for start, end in events:
            inside = times[(times >= start - 1e-9) & (times <= end + tolerance_s + 1e-9)]
            if inside.size:
                out.append(inside[0] - end)
    return np.asarray(out, np.float64)


def latency_summary(latencies: np.ndarray) -> dict:
    """``{"hits", "median_s", "p90_s", "max_s"}`` (NaN when nothing was detected)."""
    if latencies.size == 0:
        return {"hits": 0, "median_s": float("nan"), "p90_s": float("nan"), "max_s": float("nan")}
    return {"hits": int(latencies.size), "median_s": float(np.median(latencies)),
            "p90_s": float(np.percentile(latencies, 90)), "max_s": float(latencies.max())}
