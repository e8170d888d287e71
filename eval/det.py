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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import sklearn.metrics

from eval.streaming import (
    Stream,
    frames_from_seconds,
    smooth_posteriors,
    sweep_detections,
    validate_thresholds,
)

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

_SECONDS_PER_HOUR = 3600.0
_TIME_EPS = 1e-9  # seconds; slack when checking events against the stream duration


# ----------------------------------------------------------------------------------- clip level
def _finite_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a)
        if bad.any():
            raise ValueError(f"{name} contains NaN/inf at index(es) {np.argwhere(bad)[:5].ravel().tolist()}")
    return a


def det_curve(y_true, y_score, pos_label=None, sample_weight=None, drop_intermediate=False):
    """Clip-level DET curve; same contract and output as ``sklearn.metrics.det_curve``.

    Args:
        y_true: binary labels, shape ``[N]``.
        y_score: scores (higher = more positive), shape ``[N]``.
        pos_label, sample_weight, drop_intermediate: as in scikit-learn.

    Returns:
        ``(fpr, fnr, thresholds)``, each shape ``[P]``: thresholds increasing; fpr
        non-increasing, fnr non-decreasing (a clip is positive if ``score >= threshold``).
    """
    y_score = _finite_1d(y_score, "y_score")
    kwargs = {}
    if sample_weight is not None:
        kwargs["sample_weight"] = _finite_1d(sample_weight, "sample_weight")
    if drop_intermediate:  # only passed when set, for scikit-learn versions without it
        kwargs["drop_intermediate"] = True
    return sklearn.metrics.det_curve(y_true, y_score, pos_label=pos_label, **kwargs)


def _posterior_matrix(posteriors, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(posteriors, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"posteriors must have shape [N, C]; got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape [N]={p.shape[0]}; got {y.shape}")
    _finite_1d(p, "posteriors")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices; got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}]; got range [{y.min()}, {y.max()}]")
    return p, y


def _keyword_columns(keyword_columns, n_classes: int) -> list[int]:
    cols = list(range(n_classes)) if keyword_columns is None else [int(c) for c in keyword_columns]
    if not cols:
        raise ValueError("keyword_columns is empty")
    bad = [c for c in cols if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"keyword_columns {bad} out of range for {n_classes} classes")
    return cols


def clip_det_curves(posteriors, labels, keyword_columns=None, names=None) -> dict:
    """Per-keyword one-vs-rest clip-level DET curves.

    Args:
        posteriors: per-clip posteriors, shape ``[N, C]``.
        labels: true class index per clip, shape ``[N]``.
        keyword_columns: columns to evaluate (default all; leave out filler classes such as
            silence/unknown, which are then only negatives).
        names: optional names for the keys of the result, one per keyword column.

    Returns:
        ``{column or name: (fpr, fnr, thresholds)}``; keyword ``c`` uses
        ``y_true = labels == c``, ``y_score = posteriors[:, c]``.
    """
    p, y = _posterior_matrix(posteriors, labels)
    cols = _keyword_columns(keyword_columns, p.shape[1])
    if names is not None and len(names) != len(cols):
        raise ValueError(f"names has {len(names)} entries for {len(cols)} keyword columns")
    out = {}
    for i, c in enumerate(cols):
        key = c if names is None else names[i]
        n_pos = int((y == c).sum())
        if n_pos in (0, y.size):
            raise ValueError(f"keyword {key!r}: needs both positive and negative clips; has {n_pos} of {y.size} positive")
        out[key] = det_curve(y == c, p[:, c])
    return out


def max_keyword_scores(posteriors, keyword_columns=None) -> np.ndarray:
    """Max posterior over the keyword columns per clip, ``[N, C] -> [N]``."""
    p = np.asarray(posteriors, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"posteriors must have shape [N, C]; got {p.shape}")
    return p[:, _keyword_columns(keyword_columns, p.shape[1])].max(axis=1)


def clip_det_any_keyword(posteriors, labels, keyword_columns=None):
    """Clip-level DET for "some keyword present" scored by the max over keyword posteriors.

    A clip is positive if its label is one of ``keyword_columns``; its score is
    ``max_{c in keyword_columns} posteriors[:, c]``. Returns ``(fpr, fnr, thresholds)``.
    """
    p, y = _posterior_matrix(posteriors, labels)
    cols = _keyword_columns(keyword_columns, p.shape[1])
    return det_curve(np.isin(y, cols), p[:, cols].max(axis=1))


def clip_max_over_frames(sequences: Sequence) -> np.ndarray:
    """Per-clip max over frames: list of ``[T_i, C]`` (or ``[T_i]``) posteriors -> ``[N, C]`` (``[N]``)."""
    if len(sequences) == 0:
        raise ValueError("sequences is empty")
    out = []
    for i, s in enumerate(sequences):
        a = _finite_1d(np.asarray(s, dtype=np.float64), f"sequences[{i}]")
        if a.shape[0] == 0:
            raise ValueError(f"sequences[{i}] has no frames")
        out.append(a.max(axis=0))
    return np.stack(out)


# --------------------------------------------------------------------------- operating points
def pareto_envelope(fa_per_hour, frr) -> np.ndarray:
    """Indices of the Pareto-optimal (lower-left) DET points, ordered by increasing FA/h.

    Points are sorted by (FA/h, FRR) ascending and a point is kept iff its FRR is strictly
    below that of every point before it, so along the result FA/h is strictly increasing
    and FRR strictly decreasing. Points with a NaN coordinate are ignored.
    """
    x = np.asarray(fa_per_hour, dtype=np.float64)
    y = np.asarray(frr, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((y[ok], x[ok]))]
    ys = y[order]
    prev_min = np.minimum.accumulate(np.r_[np.inf, ys[:-1]])
    return order[ys < prev_min]


def _interp_on_envelope(xv, yv, targets, increasing: bool):
    """Linear interpolation of y at targets on vertices (xv increasing); NaN + status outside."""
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not np.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"operating-point targets must be finite and >= 0; got {t.tolist()}")
    val = np.full(t.shape, np.nan)
    status = np.full(t.shape, "ok", dtype=object)
    if xv.size == 0:
        status[:] = "undefined"
        return val, status
    if increasing:
        xs, ys = xv, yv
    else:  # xv decreasing: flip so np.interp gets increasing abscissae
        xs, ys = xv[::-1], yv[::-1]
    below, above = t < xs[0], t > xs[-1]
    inside = ~(below | above)
    val[inside] = np.interp(t[inside], xs, ys)
    status[below] = "below_range"
    status[above] = "above_range"
    return val, status


def frr_at_fa(fa_per_hour, frr, targets):
    """FRR at target FA/h values on the Pareto envelope (see :meth:`DetCurve.frr_at_fa`).

    Returns:
        ``(frr_values [K], status [K])``; status is ``'ok'``, ``'below_range'`` (target below
        the smallest achieved FA/h), ``'above_range'`` (above the largest) or ``'undefined'``.
    """
    idx = pareto_envelope(fa_per_hour, frr)
    x = np.asarray(fa_per_hour, dtype=np.float64)[idx]
    y = np.asarray(frr, dtype=np.float64)[idx]
    return _interp_on_envelope(x, y, targets, increasing=True)


def fa_at_frr(fa_per_hour, frr, targets):
    """FA/h at target FRR values on the Pareto envelope; returns ``(fa_values [K], status [K])``.

    ``'below_range'`` = target FRR lower than any achieved, ``'above_range'`` = higher.
    """
    idx = pareto_envelope(fa_per_hour, frr)
    x = np.asarray(fa_per_hour, dtype=np.float64)[idx]
    y = np.asarray(frr, dtype=np.float64)[idx]
    return _interp_on_envelope(y, x, targets, increasing=False)


# -------------------------------------------------------------------------------- DET curve
@dataclass(frozen=True)
class DetCurve:
    """A streaming DET curve: one row per threshold of the grid (shapes ``[M]``).

    Attributes:
        thresholds: the grid ``θ``, increasing.
        frr: false rejection rate, ``n_missed / n_occurrences``.
        fa_per_hour: false alarms per hour, ``n_false_alarms / hours``.
        n_missed, n_false_alarms: counts per threshold.
        n_occurrences: number of keyword occurrences (scalar).
        hours: hours of audio without the keyword (scalar, the FA/h denominator).
    """

    thresholds: np.ndarray
    frr: np.ndarray
    fa_per_hour: np.ndarray
    n_missed: np.ndarray
    n_false_alarms: np.ndarray
    n_occurrences: int
    hours: float
    keyword: object = None

    def to_frame(self) -> pd.DataFrame:
        """Columns: threshold, frr, fa_per_hour, n_missed, n_false_alarms, n_occurrences,
        hours, pareto (bool: on the monotone envelope used for operating points)."""
        on = np.zeros(self.thresholds.size, dtype=bool)
        on[pareto_envelope(self.fa_per_hour, self.frr)] = True
        return pd.DataFrame(
            {
                "threshold": self.thresholds,
                "frr": self.frr,
                "fa_per_hour": self.fa_per_hour,
                "n_missed": self.n_missed,
                "n_false_alarms": self.n_false_alarms,
                "n_occurrences": self.n_occurrences,
                "hours": self.hours,
                "pareto": on,
            }
        )

    @property
    def is_monotone(self) -> bool:
        """True iff, as θ increases, FRR never decreases and FA/h never increases."""
        return bool((np.diff(self.frr) >= 0).all() and (np.diff(self.fa_per_hour) <= 0).all())

    def envelope(self) -> pd.DataFrame:
        """Pareto envelope rows (FA/h strictly increasing, FRR strictly decreasing)."""
        return self.to_frame().iloc[pareto_envelope(self.fa_per_hour, self.frr)].reset_index(drop=True)

    def frr_at_fa(self, targets=(0.5, 1.0, 2.0)) -> pd.DataFrame:
        """FRR at fixed FA/h budgets.

        The DET points are reduced to their Pareto envelope (vertices ``(x_i, y_i)`` with FA/h
        ``x`` strictly increasing, FRR ``y`` strictly decreasing; each vertex is the lowest FRR
        the grid achieves with FA/h <= ``x_i``), and FRR is interpolated linearly in FA/h between
        adjacent vertices; a target equal to a vertex returns that vertex's FRR. Targets outside
        ``[x_0, x_last]`` are not extrapolated: ``frr`` is NaN and ``status`` says
        ``'below_range'`` / ``'above_range'``.

        Returns:
            DataFrame with columns ``fa_per_hour`` (target), ``frr``, ``status``, ``in_range``,
            ``threshold`` (grid threshold of the envelope vertex with the largest FA/h <= target,
            a deployable setting whose FRR is >= the interpolated one; NaN out of range).
        """
        val, status = frr_at_fa(self.fa_per_hour, self.frr, targets)
        idx = pareto_envelope(self.fa_per_hour, self.frr)
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        thr = np.full(t.shape, np.nan)
        ok = status == "ok"
        if ok.any():
            pos = np.searchsorted(self.fa_per_hour[idx], t[ok], side="right") - 1
            thr[ok] = self.thresholds[idx][pos]
        return pd.DataFrame(
            {"fa_per_hour": t, "frr": val, "status": status, "in_range": ok, "threshold": thr}
        )

    def fa_at_frr(self, targets=(0.05, 0.1)) -> pd.DataFrame:
        """FA/h at fixed FRR values: the inverse of :meth:`frr_at_fa` on the same envelope
        (linear in FRR between vertices; NaN + ``status`` outside the achieved FRR range).

        Returns:
            DataFrame with columns ``frr`` (target), ``fa_per_hour``, ``status``, ``in_range``.
        """
        val, status = fa_at_frr(self.fa_per_hour, self.frr, targets)
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        return pd.DataFrame({"frr": t, "fa_per_hour": val, "status": status, "in_range": status == "ok"})


# ------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class StreamingCounts:
    """Per-stream counts of a threshold sweep for one keyword (``S`` streams, ``M`` thresholds).

    Attributes:
        keyword: the evaluated keyword (column index or name).
        thresholds: grid, shape ``[M]``.
        stream_ids: shape ``[S]``.
        n_missed: missed occurrences, int ``[S, M]``.
        n_occurrences: occurrences, int ``[S]``.
        n_false_alarms: false alarms, int ``[S, M]``.
        hours: hours of audio without the keyword, float ``[S]``.
        n_detections: all detections, int ``[S, M]``.
        settings: the evaluation parameters (hop, smoothing, refractory, tolerance, flag).
    """

    keyword: object
    thresholds: np.ndarray
    stream_ids: list
    n_missed: np.ndarray
    n_occurrences: np.ndarray
    n_false_alarms: np.ndarray
    hours: np.ndarray
    n_detections: np.ndarray
    settings: dict = field(default_factory=dict)

    def curve(self) -> DetCurve:
        """Pooled DET curve over all streams (micro-average: summed counts / summed hours)."""
        occ, hrs = int(self.n_occurrences.sum()), float(self.hours.sum())
        miss, fa = self.n_missed.sum(axis=0), self.n_false_alarms.sum(axis=0)
        return DetCurve(self.thresholds, miss / occ, fa / hrs, miss, fa, occ, hrs, self.keyword)

    def bootstrap(
        self,
        fa_targets=(0.5, 1.0, 2.0),
        frr_targets=(),
        n_boot: int = 1000,
        seed: int = 0,
        ci: float = 0.95,
    ) -> pd.DataFrame:
        """Percentile bootstrap CIs of operating points, resampling streams with replacement.

        Each replicate draws ``S`` streams with replacement (``numpy.random.default_rng(seed)``),
        re-pools their counts and recomputes the operating points as in
        :meth:`DetCurve.frr_at_fa` / :meth:`DetCurve.fa_at_frr`. Replicates in which the curve
        is undefined (no occurrence or no negative audio drawn) or the target falls outside
        the replicate's achieved range are excluded; ``n_valid`` counts the rest.

        Returns:
            DataFrame, one row per target: ``kind`` ('frr_at_fa' or 'fa_at_frr'), ``target``,
            ``estimate`` (full-data value), ``status`` (full data), ``ci_low``, ``ci_high``
            (the ``(1-ci)/2`` and ``(1+ci)/2`` percentiles; NaN if ``n_valid == 0``), ``n_valid``,
            ``n_boot``.
        """
        if int(n_boot) < 1:
            raise ValueError(f"n_boot must be >= 1; got {n_boot!r}")
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1); got {ci!r}")
        fa_t = np.asarray(fa_targets, dtype=np.float64).reshape(-1)
        frr_t = np.asarray(frr_targets, dtype=np.float64).reshape(-1)
        S, B = len(self.stream_ids), int(n_boot)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, S, size=(B, S))
        W = np.bincount((draws + S * np.arange(B)[:, None]).ravel(), minlength=B * S).reshape(B, S)
        W = W.astype(np.float64)
        occ, hrs = W @ self.n_occurrences, W @ self.hours
        miss, fa = W @ self.n_missed, W @ self.n_false_alarms
        boot_frr = np.full((B, fa_t.size), np.nan)
        boot_fa = np.full((B, frr_t.size), np.nan)
        for b in np.flatnonzero((occ > 0) & (hrs > 0)):
            x, y = fa[b] / hrs[b], miss[b] / occ[b]
            if fa_t.size:
                boot_frr[b] = frr_at_fa(x, y, fa_t)[0]
            if frr_t.size:
                boot_fa[b] = fa_at_frr(x, y, frr_t)[0]
        point = self.curve()
        rows = []
        q = [50 * (1 - ci), 50 * (1 + ci)]
        for kind, targets, boot, (est, st) in (
            ("frr_at_fa", fa_t, boot_frr, frr_at_fa(point.fa_per_hour, point.frr, fa_t)),
            ("fa_at_frr", frr_t, boot_fa, fa_at_frr(point.fa_per_hour, point.frr, frr_t)),
        ):
            for j, t in enumerate(targets):
                v = boot[:, j][np.isfinite(boot[:, j])]
                lo, hi = np.percentile(v, q) if v.size else (np.nan, np.nan)
                rows.append(dict(kind=kind, target=t, estimate=est[j], status=st[j], ci_low=lo,
                                 ci_high=hi, n_valid=int(v.size), n_boot=B))
        cols = ["kind", "target", "estimate", "status", "ci_low", "ci_high", "n_valid", "n_boot"]
        return pd.DataFrame(rows, columns=cols)


def _resolve_keyword(kw, keyword_names, where: str) -> int:
    if isinstance(kw, (str, np.str_)):
        if keyword_names is None or kw not in list(keyword_names):
            raise ValueError(f"{where}: keyword {kw!r} is not in keyword_names {keyword_names!r}")
        return list(keyword_names).index(kw)
    if isinstance(kw, (int, np.integer)) and not isinstance(kw, bool):
        return int(kw)
    raise ValueError(f"{where}: keyword must be a column index or a name; got {kw!r}")


def _covered_seconds(windows: np.ndarray, duration: float) -> float:
    """Length of the union of ``[lo, hi]`` windows clipped to ``[0, duration]``."""
    if windows.size == 0:
        return 0.0
    w = np.clip(windows[np.argsort(windows[:, 0])], 0.0, duration)
    total, cur_lo, cur_hi = 0.0, w[0, 0], w[0, 1]
    for lo, hi in w[1:]:
        if lo > cur_hi:
            total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    return total + cur_hi - cur_lo


def evaluate_streams(
    streams: Sequence[Stream],
    thresholds,
    *,
    hop_s: float,
    keyword: int | str = 0,
    keyword_names: Sequence[str] | None = None,
    smoothing_s: float = 0.0,
    refractory_s: float = 0.0,
    tolerance_s: float = 0.0,
    fa_in_positive_streams: bool = False,
) -> StreamingCounts:
    """Sweep a threshold grid over streams for one keyword and count misses and false alarms.

    Args:
        streams: :class:`~eval.streaming.Stream` objects (scores ``[T]`` or ``[T, K]``).
        thresholds: strictly increasing grid in [0, 1], shape ``[M]``.
        hop_s: frame hop in seconds (frame ``t`` is at ``t * hop_s``; duration ``T * hop_s``).
        keyword: column index, or a name in ``keyword_names``; 1-D scores are column 0.
        keyword_names: names of the score columns, to resolve string keywords in events.
        smoothing_s: causal moving-average window in seconds (0 = none).
        refractory_s: refractory period in seconds after each detection (0 = none).
        tolerance_s: an occurrence matches detections at times in ``[start, end + tolerance_s]``.
        fa_in_positive_streams: which audio counts for FA/h (module docstring): False = only
            streams without the keyword; True = also the non-keyword parts of the others.

    Returns:
        :class:`StreamingCounts`; call ``.curve()`` for the DET curve.

    Raises:
        ValueError: empty stream list, bad grid, NaN/inf or non-[0, 1] scores, events outside
            a stream, no occurrence of the keyword, or zero hours of audio without it.
    """
    thr = validate_thresholds(thresholds)
    if len(streams) == 0:
        raise ValueError("streams is empty: need at least one stream to evaluate")
    for name, v in (("smoothing_s", smoothing_s), ("refractory_s", refractory_s), ("tolerance_s", tolerance_s)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be finite and >= 0 seconds; got {v!r}")
    r = frames_from_seconds(refractory_s, hop_s, how="ceil")
    k = _resolve_keyword(keyword, keyword_names, "keyword")
    if keyword_names is not None and not 0 <= k < len(keyword_names):
        raise ValueError(f"keyword column {k} out of range for keyword_names {list(keyword_names)!r}")
    name = keyword_names[k] if keyword_names is not None else k
    M, S = thr.size, len(streams)
    miss = np.zeros((S, M), np.int64)
    fas = np.zeros((S, M), np.int64)
    dets = np.zeros((S, M), np.int64)
    occ = np.zeros(S, np.int64)
    hrs = np.zeros(S, np.float64)
    ids = []
    for i, st in enumerate(streams):
        sid = st.stream_id if st.stream_id is not None else f"#{i}"
        ids.append(sid)
        where = f"stream {sid!r}"
        x = np.asarray(st.scores)
        if x.ndim == 2 and not 0 <= k < x.shape[1]:
            raise ValueError(f"{where}: keyword column {k} out of range for scores of shape {x.shape}")
        if x.ndim == 1 and k != 0:
            raise ValueError(f"{where}: 1-D scores hold one keyword (column 0); asked for column {k}")
        try:  # only the evaluated column is smoothed and checked
            s = smooth_posteriors(x[:, k] if x.ndim == 2 else x, hop_s, smoothing_s)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        T = s.size
        dur = T * float(hop_s)
        win = []
        for ev in st.events:
            if len(ev) != 3:
                raise ValueError(f"{where}: event {ev!r} is not (start_s, end_s, keyword)")
            start, end, kw = float(ev[0]), float(ev[1]), ev[2]
            if not (np.isfinite(start) and np.isfinite(end)) or start > end:
                raise ValueError(f"{where}: event {tuple(ev)!r} needs finite start_s <= end_s")
            if start < -_TIME_EPS or end > dur + _TIME_EPS:
                raise ValueError(
                    f"{where}: event {tuple(ev)!r} lies outside the stream duration [0, {dur:g}] s"
                )
            if _resolve_keyword(kw, keyword_names, where) == k:
                win.append((start, end + tolerance_s))
        win = np.asarray(win, dtype=np.float64).reshape(-1, 2)
        m_idx, frames = sweep_detections(s, thr, r)
        dets[i] = np.bincount(m_idx, minlength=M)
        occ[i] = len(win)
        if len(win) == 0:
            fas[i] = dets[i]
            hrs[i] = dur / _SECONDS_PER_HOUR
            continue
        # occurrence j is hit at threshold m iff a detection frame lies in [lo_j, hi_j]
        lo = np.ceil(win[:, 0] / hop_s - 1e-9).astype(np.int64)
        hi = np.minimum(np.floor(win[:, 1] / hop_s + 1e-9).astype(np.int64), T - 1)
        stride = np.int64(T + 1)
        key = m_idx * stride + frames  # sorted: by threshold, then frame
        base = np.arange(M, dtype=np.int64)[None, :] * stride
        hit = np.searchsorted(key, base + hi[:, None], "right") > np.searchsorted(key, base + lo[:, None], "left")
        miss[i] = len(win) - hit.sum(axis=0)
        if fa_in_positive_streams:
            covered = np.zeros(T + 1, np.int64)
            ok = lo <= hi
            np.add.at(covered, lo[ok], 1)
            np.add.at(covered, hi[ok] + 1, -1)
            in_win = np.cumsum(covered)[:T] > 0
            fas[i] = np.bincount(m_idx[~in_win[frames]], minlength=M)
            hrs[i] = (dur - _covered_seconds(win, dur)) / _SECONDS_PER_HOUR
    if occ.sum() == 0:
        raise ValueError(f"no occurrence of keyword {name!r} in any of the {S} streams: FRR is undefined")
    if hrs.sum() <= 0:
        raise ValueError(
            f"0 hours of audio without keyword {name!r} (fa_in_positive_streams={fa_in_positive_streams}): "
            "FA/h is undefined; add negative streams"
        )
    settings = dict(hop_s=hop_s, smoothing_s=smoothing_s, refractory_s=refractory_s, refractory_frames=r,
                    tolerance_s=tolerance_s, fa_in_positive_streams=fa_in_positive_streams)
    return StreamingCounts(name, thr, ids, miss, occ, fas, hrs, dets, settings)


def evaluate_keywords(streams: Sequence[Stream], thresholds, *, hop_s: float, keywords=None,
                      keyword_names: Sequence[str] | None = None, **kwargs) -> dict:
    """:func:`evaluate_streams` for several keywords: ``{keyword: StreamingCounts}``.

    ``keywords`` defaults to ``keyword_names`` if given, else every score column.
    """
    if len(streams) == 0:
        raise ValueError("streams is empty: need at least one stream to evaluate")
    if keywords is None:
        x = np.asarray(streams[0].scores)
        keywords = list(keyword_names) if keyword_names is not None else list(range(1 if x.ndim == 1 else x.shape[1]))
    return {kw: evaluate_streams(streams, thresholds, hop_s=hop_s, keyword=kw, keyword_names=keyword_names, **kwargs)
            for kw in keywords}
