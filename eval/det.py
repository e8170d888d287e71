"""Detection-error-tradeoff (DET) metrics for keyword spotting (METHODS.md §10).

Two variants, both independent of any model:

* **Clip level** -- :func:`det_curve` has exactly the contract (and output) of
  ``sklearn.metrics.det_curve``; :func:`clip_det_curves` adds per-keyword one-vs-rest curves
  from a ``[N, C]`` posterior matrix, :func:`clip_det_any_keyword` the max-over-keywords
  score, :func:`clip_max_over_frames` the per-clip max over frames.
* **Streaming** -- :func:`evaluate_streams` sweeps a threshold grid over long streams
  (detection rules in :mod:`eval.streaming`) and keeps per-stream counts, from which
  :meth:`StreamingCounts.curve` gives the DET curve (FRR vs false alarms per hour) and
  :meth:`StreamingCounts.bootstrap` stream-resampled confidence intervals.

Streaming definitions, for keyword ``k`` and threshold ``θ``:

* an occurrence ``(start_s, end_s, k)`` is *detected* if some detection of ``k`` has its time
  in ``[start_s, end_s + tolerance_s]``; ``FRR(θ) = missed occurrences / all occurrences``.
* ``FA/h(θ) = false alarms / hours of audio without k``. Which audio that is, is a flag:

  - ``fa_in_positive_streams=False`` (default): only streams with *no* occurrence of ``k``
    count; every detection there is a false alarm; their total duration is the denominator.
    Detections in streams containing ``k`` that match no occurrence are ignored.
  - ``fa_in_positive_streams=True``: additionally, detections in streams containing ``k``
    that match no occurrence window are false alarms, and those streams contribute their
    duration minus the union of the windows ``[start_s, end_s + tolerance_s]``.

  A stream that contains only *other* keywords is audio without ``k``.

Monotonicity. Clip-level FPR/FNR are monotone in the threshold. Streaming FRR and FA/h are
*not* monotone in ``θ`` in general, because a detection is a crossing: a curve that stays
above a low ``θ`` fires once (often before the keyword, so the occurrence is missed) where
at a higher ``θ`` it may cross several times; a refractory period adds the same effect.
E.g. at ``θ = 0`` every stream fires exactly once, at its first frame. The DET curve
therefore reports the raw per-threshold values *and* their Pareto (lower-left) envelope,
which is monotone by construction (FA/h increasing, FRR decreasing); operating points are
read off the envelope (see :meth:`DetCurve.frr_at_fa`).

The code lives in three modules, re-exported here: :mod:`eval.clip_det` (clip level), :mod:`eval.det_curve` (curves
and operating points), :mod:`eval.stream_det` (streaming counts and bootstrap).
"""
from __future__ import annotations

from eval.clip_det import clip_det_any_keyword, clip_det_curves, clip_max_over_frames, det_curve, max_keyword_scores
from eval.det_curve import DetCurve, fa_at_frr, frr_at_fa, pareto_envelope
from eval.stream_det import StreamingCounts, evaluate_keywords, evaluate_streams
from eval.streaming import Stream, validate_thresholds

__all__ = [
    "det_curve",
    "clip_det_curves",
    "clip_det_any_keyword",
    "max_keyword_scores",
    "clip_max_over_frames",
    "DetCurve",
    "StreamingCounts",
    "evaluate_streams",
    "evaluate_keywords",
    "pareto_envelope",
    "frr_at_fa",
    "fa_at_frr",
    "Stream",
    "validate_thresholds",
]
