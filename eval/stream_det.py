"""Streaming DET counts (METHODS.md §10): :func:`evaluate_streams` sweeps a threshold grid over long streams
(detection rules in :mod:`eval.streaming`) and keeps per-stream counts in :class:`StreamingCounts`, whose
:meth:`~StreamingCounts.curve` is the DET curve and :meth:`~StreamingCounts.bootstrap` its stream-resampled
confidence intervals. Part of :mod:`eval.det` (the definitions are in its docstring), which re-exports it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from eval.det_curve import DetCurve, fa_at_frr, frr_at_fa
from eval.streaming import Stream, frames_from_seconds, smooth_posteriors, sweep_detections, validate_thresholds

_SECONDS_PER_HOUR = 3600.0
_TIME_EPS = 1e-9  # seconds; slack when checking events against the stream duration


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
