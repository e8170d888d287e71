"""Clip-level DET metrics (METHODS.md §10): :func:`det_curve` has exactly the contract (and output) of
``sklearn.metrics.det_curve``; :func:`clip_det_curves` adds per-keyword one-vs-rest curves from a ``[N, C]`` posterior
matrix, :func:`clip_det_any_keyword` the max-over-keywords score, :func:`clip_max_over_frames` the per-clip max over
frames. Part of :mod:`eval.det`, which re-exports it."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sklearn.metrics


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
