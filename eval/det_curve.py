"""Streaming DET curves and their operating points (METHODS.md §10): the Pareto (lower-left) envelope of per-threshold
(FA/h, FRR) pairs, FRR at target FA/h and FA/h at target FRR read off it, and :class:`DetCurve`. Part of
:mod:`eval.det` (the definitions are in its docstring), which re-exports it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
