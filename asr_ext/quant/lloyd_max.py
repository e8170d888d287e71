"""1-D Lloyd-Max (k-means) centroids for one weight tensor (METHODS §4; S8BQAT, Zhen et al. 2022)."""
from __future__ import annotations

import numpy as np

from kws_quant.quantizers.base import check_bits

INT8_LEVELS = 127


def int8_grid_scale(w) -> float:
    """``s8 = max|W| / 127``: the step of the int8 grid the centroids may be snapped to."""
    w = np.asarray(w, np.float64)
    return float(np.max(np.abs(w)) / INT8_LEVELS) if w.size else 0.0


def snap_to_int8_grid(centroids, w) -> np.ndarray:
    """Round each centroid to the nearest multiple of ``s8 = max|W|/127`` (clipped to ±127 steps), float32.

    The snapped codebook is ``s8 · n`` with integer ``n ∈ [-127, 127]``, so it is exactly representable by an int8
    accelerator with one per-tensor scale. Snapping may merge neighbouring centroids (repeated values are allowed).
    """
    s8 = int8_grid_scale(w)
    c = np.asarray(centroids, np.float64)
    if s8 == 0.0:
        return np.zeros_like(c, np.float32)
    n = np.clip(np.round(c / s8), -INT8_LEVELS, INT8_LEVELS)
    return np.sort((n * s8).astype(np.float32))


def quantization_mse(w, centroids) -> float:
    """Mean squared error of mapping every element of ``w`` to its nearest centroid (float64)."""
    w = np.asarray(w, np.float64).ravel()
    c = np.sort(np.asarray(centroids, np.float64))
    idx = np.searchsorted((c[:-1] + c[1:]) / 2.0, w, side="left")
    return float(np.mean((w - c[idx]) ** 2))


def uniform_grids(w, k: int) -> dict:
    """The uniform K-level codebooks of a tensor that :func:`lloyd_max` must not be worse than.

    ``"midrise"``: step ``Δ = (max-min)/K``, levels ``min + (j-0.5)Δ`` (every weight within Δ/2 of a level);
    ``"endpoints"``: ``linspace(min, max, K)``; ``"symmetric"``: ``linspace(-max|W|, max|W|, K)``.
    """
    x = np.asarray(w, np.float64).ravel()
    lo, hi, m = float(x.min()), float(x.max()), float(np.abs(x).max())
    return {"midrise": lo + (hi - lo) * (np.arange(k) + 0.5) / k, "endpoints": np.linspace(lo, hi, k),
            "symmetric": np.linspace(-m, m, k)}


def lloyd_max(w, bits: int, tol: float = 1e-7, max_iter: int = 1000, snap_int8: bool = False,
              guard_uniform: bool = True, return_info: bool = False):
    """K = 2^bits Lloyd-Max centroids of the values of ``w`` (any shape; flattened).

    Exactly METHODS §4: initialise at the quantiles ``(k-0.5)/K``, k = 1..K; iterate
    (boundaries ``t_k = (c_k + c_{k+1})/2``; each centroid ← mean of the weights in its cell; an empty cell keeps its
    centroid) until the MSE drop is below ``tol`` relative to the previous MSE (or the MSE is 0, or ``max_iter``
    updates). Computed in float64; returned as float32.

    Args:
        w: the weights (array-like, finite, not empty).
        bits: 1..8.
        tol: relative MSE drop at which to stop (METHODS: 1e-7).
        max_iter: a safety cap on the number of updates.
        snap_int8: afterwards round every centroid to the int8 grid ``s8 = max|W|/127`` (:func:`snap_to_int8_grid`).
        guard_uniform: Lloyd-Max is a local method: from the quantile initialisation it can stop at a fixed point
            that is worse than a uniform grid (e.g. 5000 N(0,1) samples at 6 bits: MSE 1.31e-3 vs 1.02e-3). When
            that happens (and only then), the same iteration is re-run from the best of :func:`uniform_grids` and the
            better result is kept, so the METHODS §4 property "MSE not above uniform quantization with the same K"
            holds by construction. ``False`` gives the bare quantile-initialised procedure.
        return_info: also return ``{"iterations", "mse", "init_mse", "converged", "init"}``.

    Returns:
        Sorted float32 centroids of shape ``(2^bits,)`` (values may repeat when ``w`` has fewer distinct values than
        K or after snapping), and the info dict when ``return_info``.
    """
    bits = check_bits("lloyd_max", bits, 1, 8)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"lloyd_max: tol={tol!r} is not allowed; allowed: a number >= 0")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"lloyd_max: max_iter={max_iter!r} is not allowed; allowed: an integer >= 1")
    x = np.asarray(w, np.float64).ravel()
    if x.size == 0:
        raise ValueError("lloyd_max: the weight tensor is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("lloyd_max: the weight tensor has NaN or infinite values")
    k = 2 ** bits
    c, info = _iterate(x, np.quantile(x, (np.arange(1, k + 1) - 0.5) / k), tol, max_iter)
    info["init"] = "quantile"
    if guard_uniform:
        name, grid = min(uniform_grids(x, k).items(), key=lambda kv: quantization_mse(x, kv[1]))
        if quantization_mse(x, c) > quantization_mse(x, grid):
            c2, info2 = _iterate(x, grid, tol, max_iter)
            if info2["mse"] < info["mse"]:
                c, info = c2, {**info2, "init": name}
    out = np.sort(c.astype(np.float32))
    if snap_int8:
        out = snap_to_int8_grid(out, x)
    if return_info:
        return out, {**info, "mse": quantization_mse(x, out)}
    return out


def _iterate(x, c, tol, max_iter):
    """Lloyd iterations from sorted float64 centroids ``c`` until the relative MSE drop is below ``tol``."""
    k = len(c)
    c = np.sort(np.asarray(c, np.float64))

    def assign(c):
        idx = np.searchsorted((c[:-1] + c[1:]) / 2.0, x, side="left")
        return idx, float(np.mean((x - c[idx]) ** 2))

    idx, mse = assign(c)
    init_mse, iterations, converged = mse, 0, mse == 0.0
    while not converged and iterations < max_iter:
        counts = np.bincount(idx, minlength=k)
        sums = np.bincount(idx, weights=x, minlength=k)
        new = c.copy()
        full = counts > 0
        new[full] = sums[full] / counts[full]  # an empty cell keeps its centroid
        new = np.sort(new)  # a no-op (cell means stay ordered); guards against rounding
        new_idx, new_mse = assign(new)
        iterations += 1
        if new_mse > mse:  # cannot happen in exact arithmetic; keep the better codebook
            converged = True
            break
        drop = mse - new_mse
        c, idx, prev, mse = new, new_idx, mse, new_mse
        converged = mse == 0.0 or drop < tol * prev
    return c, {"iterations": iterations, "mse": mse, "init_mse": init_mse, "converged": bool(converged)}
