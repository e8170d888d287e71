"""General Quantizer, GQ (METHODS §6; Zhen et al. 2022b): learnable μ-law centroids, soft-to-hard assignment.

Per tensor, ``K = 2^b``: grid ``u_j = (2(j-1) - (K-1)) / (K-1)`` (= ``-1 + 2(j-1)/(K-1)``, written so that
``u_{K+1-j} = -u_j`` exactly), μ-law inverse ``F⁻¹(u) = sign(u) · expm1(|u| · log1p(μ)) / μ``
(= ``sign(u)((1+μ)^|u| - 1)/μ``), centroids ``c_j = s · F⁻¹(u_j)``; for b = 1 the centroids are exactly ``{-s, +s}``.
Sorted (``s > 0``, ``F⁻¹`` increasing) and exactly symmetric (``F⁻¹`` is computed as an odd function).

Soft assignment ``a_j(w) = softmax_j(-(w - c_j)² / (τ s²))``, soft weight ``w̃ = Σ_j a_j c_j`` (differentiable in w,
s and μ). Hard: the nearest centroid (:mod:`asr_ext.quant.codebook`'s rule) with a straight-through gradient for w,
``w_hard = c_idx + (w - sg(w))``: forward exactly ``c_idx``, gradient 1 to w, and s and μ still get the gradient of
``c_idx``.

State created on the layer by :meth:`GeneralQuantizer.build`, all saved with the weights:
``<role>_gq_scale`` (trainable s, init max|W| of the layer's current tensor, kept ≥ 1e-8 by a constraint),
``<role>_gq_mu_param`` (trainable ρ, μ = softplus(ρ), init softplus⁻¹(mu_init)), ``<role>_gq_tau`` (τ,
non-trainable), ``<role>_gq_hard`` (1.0 = hard forward, non-trainable) and ``<role>_gq_initialized`` (non-trainable):
the first *training* call sets ``s = max|W|`` from the tensor's value at that time (the float weights transferred into
the QAT model after it was built), then marks it initialized.

:class:`TemperatureAnnealing` anneals τ geometrically from τ₀ to τ_min over N optimizer steps and then switches to
the hard forward; :func:`set_gq_hard` switches any time. Per-layer bits: :func:`gq_recipe` with a bits map.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from asr_ext.quant import bits_map as bm
from asr_ext.quant.codebook import CodebookCodes, nearest_index_np
from kws_quant.layers import quant_layers
from kws_quant.quantizers.base import Quantizer, check_bits
from kws_quant.quantizers.registry import register_quantizer

_MIN_SCALE = 1e-8


class _MinValue(keras.constraints.Constraint):
    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, w):
        return ops.maximum(w, self.value)

    def get_config(self):
        return {"value": self.value}


def _softplus_inverse(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


def _positive_number(owner, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{owner}: {name}={v!r} is not allowed; allowed: a positive number")
    return float(v)


def gq_centroids(scale, mu, bits: int):
    """The ``2^bits`` centroids ``s · F⁻¹(u_j)`` for scalar tensors ``scale`` and ``mu`` (sorted, symmetric)."""
    k = 2 ** bits
    num = 2.0 * np.arange(k, dtype=np.float64) - (k - 1)
    u = ops.convert_to_tensor((num / (k - 1)).astype(np.float32))
    scale = ops.cast(scale, "float32")
    if bits == 1:
        f = ops.sign(u)
    else:
        mu = ops.cast(mu, "float32")
        f = ops.sign(u) * ops.expm1(ops.abs(u) * ops.log1p(mu)) / mu
    return scale * f


def gq_centroids_np(scale: float, mu: float, bits: int) -> np.ndarray:
    """NumPy float64 reference of :func:`gq_centroids` (the formula of METHODS §6 as written)."""
    k = 2 ** bits
    u = -1.0 + 2.0 * np.arange(k) / (k - 1)
    if bits == 1:
        return scale * np.sign(u)
    return scale * np.sign(u) * ((1.0 + mu) ** np.abs(u) - 1.0) / mu


@register_quantizer
class GeneralQuantizer(Quantizer):
    """``"gq(bits=4, mu_init=5.0, tau0=1.0)"``: learnable μ-law codebook with soft-to-hard assignment (METHODS §6).

    Args:
        bits: 1..8 (K = 2^bits centroids; the soft assignment holds a ``[..., K]`` tensor, so keep b small for big
            tensors).
        mu_init: initial μ (> 0); μ = softplus(ρ) with trainable ρ.
        tau0: initial temperature τ (> 0) stored in the layer's ``<role>_gq_tau`` variable.
        stage: two-stage QAT stage from which it is on (``None``: by role, kernels 1).
    """

    name = "gq"

    def __init__(self, bits: int = 4, mu_init: float = 5.0, tau0: float = 1.0, stage: int | None = None):
        super().__init__(check_bits("gq", bits, 1, 8), stage)
        self.mu_init = _positive_number("gq", "mu_init", mu_init)
        self.tau0 = _positive_number("gq", "tau0", tau0)

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    # -- state ----------------------------------------------------------------------------------------------
    def build(self, layer, shape, role):
        current = getattr(layer, role, None)
        init = 1.0
        if isinstance(current, keras.Variable) and tuple(current.shape) == tuple(shape):
            value = ops.convert_to_numpy(current)
            init = max(float(np.max(np.abs(value))), _MIN_SCALE) if value.size else 1.0
        kw = dict(shape=(), autocast=False)
        const = keras.initializers.Constant
        return {
            "scale": layer.add_weight(name=f"{role}_gq_scale", initializer=const(init), trainable=True,
                                      constraint=_MinValue(_MIN_SCALE), aggregation="mean", **kw),
            # b = 1 has the centroids {-s, +s}: μ plays no part, so it is not trained (no "missing gradient" warning)
            "mu_param": layer.add_weight(name=f"{role}_gq_mu_param", initializer=const(_softplus_inverse(self.mu_init)),
                                         trainable=self.bits > 1, **kw),
            "tau": layer.add_weight(name=f"{role}_gq_tau", initializer=const(self.tau0), trainable=False,
                                    aggregation="only_first_replica", **kw),
            "hard": layer.add_weight(name=f"{role}_gq_hard", initializer="zeros", trainable=False,
                                     aggregation="only_first_replica", **kw),
            "initialized": layer.add_weight(name=f"{role}_gq_initialized", initializer="zeros", trainable=False,
                                            aggregation="only_first_replica", **kw),
        }

    def _check_state(self, state):
        if not state or "scale" not in state:
            raise ValueError("gq: this quantizer keeps its scale, μ and temperature on a layer; use it through a "
                             "quantized layer (or pass the state dict that build() returned)")

    def observe(self, x, state, training):
        """On the first training call: ``s ← max|x|`` (the float weights transferred after the model was built)."""
        if not training:
            return
        self._check_state(state)
        first = ops.equal(state["initialized"], 0.0)
        amax = ops.maximum(ops.max(ops.abs(ops.stop_gradient(ops.cast(x, "float32")))), _MIN_SCALE)
        state["scale"].assign(ops.where(first, amax, state["scale"]))
        state["initialized"].assign(1.0)

    # -- maths ----------------------------------------------------------------------------------------------
    @staticmethod
    def mu(state):
        return ops.softplus(state["mu_param"])

    def centroids(self, state):
        """The current sorted centroids, a float32 tensor ``(2^bits,)``, differentiable in s and μ."""
        self._check_state(state)
        return gq_centroids(ops.maximum(state["scale"], _MIN_SCALE), self.mu(state), self.bits)

    def soft(self, x, state, tau=None):
        """``Σ_j softmax_j(-(x - c_j)² / (τ s²)) c_j`` (τ: the state's temperature unless given)."""
        c = self.centroids(state)
        xf = ops.cast(x, "float32")
        s = ops.maximum(state["scale"], _MIN_SCALE)
        tau = state["tau"] if tau is None else tau
        logits = -ops.square(ops.expand_dims(xf, -1) - c) / (ops.cast(tau, "float32") * ops.square(s))
        a = ops.softmax(logits, axis=-1)
        return ops.cast(ops.sum(a * c, axis=-1), x.dtype)

    def hard(self, x, state):
        """Nearest centroid, ``c_idx + (x - sg(x))``: forward exactly ``c_idx``, gradient 1 to x, and to s, μ."""
        c = self.centroids(state)
        xf = ops.cast(x, "float32")
        bounds = (c[:-1] + c[1:]) * 0.5
        flat = ops.reshape(ops.stop_gradient(xf), (-1,))
        idx = ops.reshape(ops.cast(ops.searchsorted(ops.stop_gradient(bounds), flat, side="left"), "int32"),
                          ops.shape(xf))
        # one-hot product rather than a gather: the same value exactly (one non-zero term), and the branch keeps no
        # integer intermediates for the gradient (TF's cond type inference warns when branches' intermediates differ)
        c_idx = ops.sum(ops.one_hot(idx, 2 ** self.bits, dtype="float32") * c, axis=-1)
        return ops.cast(c_idx + (xf - ops.stop_gradient(xf)), x.dtype)

    def fake_quant(self, x, state=None):
        self._check_state(state)
        x = ops.convert_to_tensor(x)
        return ops.cond(ops.greater(state["hard"], 0.5), lambda: self.hard(x, state), lambda: self.soft(x, state))

    def codes(self, x, state=None) -> CodebookCodes:
        c = ops.convert_to_numpy(self.centroids(state)).astype(np.float32)
        idx = nearest_index_np(ops.convert_to_numpy(x), c)
        return CodebookCodes(idx.astype(np.uint8), c, self.bits)


# -- model-level helpers and the annealing callback -----------------------------------------------------------
def gq_states(model) -> list:
    """``[(layer, role, quantizer, state)]`` for every ``gq`` quantizer of ``model``'s quantized layers."""
    return [(layer, role, q, layer.quantizer_state(role)) for layer in quant_layers(model)
            for role, q in layer.quantizers.items() if isinstance(q, GeneralQuantizer)]


def set_gq_hard(model, hard: bool = True) -> int:
    """Switch every GQ quantizer of ``model`` to the hard (True) or soft (False) forward; returns how many."""
    states = gq_states(model)
    for *_, st in states:
        st["hard"].assign(1.0 if hard else 0.0)
    return len(states)


def set_gq_temperature(model, tau: float) -> int:
    """Set τ of every GQ quantizer of ``model``; returns how many."""
    tau = _positive_number("set_gq_temperature", "tau", tau)
    states = gq_states(model)
    for *_, st in states:
        st["tau"].assign(tau)
    return len(states)


class TemperatureAnnealing(keras.callbacks.Callback):
    """Anneal τ geometrically τ₀ → τ_min over ``steps`` optimizer steps, then (optionally) go hard.

    ``τ(step) = τ₀ · (τ_min/τ₀)^clip((step - start_step)/steps, 0, 1)``, set before each training batch from
    ``optimizer.iterations`` (a resumed run continues the schedule). From ``start_step + steps`` on, with
    ``hard_after``, every GQ quantizer switches to the hard forward (the callback never switches back to soft: a hard
    forward requested with :func:`set_gq_hard` stays).

    Args:
        steps: N, the annealing length in optimizer steps (≥ 1).
        tau_min: final temperature (> 0).
        tau0: initial temperature; ``None`` uses each quantizer's own ``tau0``.
        start_step: step at which annealing starts (τ = τ₀ before).
        hard_after: switch to the hard forward once annealed.
    """

    def __init__(self, steps: int, tau_min: float = 1e-3, tau0: float | None = None, start_step: int = 0,
                 hard_after: bool = True):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"TemperatureAnnealing: steps={steps!r} must be a positive integer")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"TemperatureAnnealing: start_step={start_step!r} must be a non-negative integer")
        self.tau_min = _positive_number("TemperatureAnnealing", "tau_min", tau_min)
        self.tau0 = None if tau0 is None else _positive_number("TemperatureAnnealing", "tau0", tau0)
        self.steps, self.start_step, self.hard_after = steps, start_step, bool(hard_after)
        self.went_hard_at: int | None = None

    def tau_at(self, step: int, tau0: float) -> float:
        frac = min(max((step - self.start_step) / self.steps, 0.0), 1.0)
        return float(tau0 * (self.tau_min / tau0) ** frac)

    def on_train_begin(self, logs=None):
        if not gq_states(self.model):
            raise ValueError("TemperatureAnnealing: the model has no gq quantizer")

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        step = int(ops.convert_to_numpy(opt.iterations)) if opt is not None else 0
        done = step >= self.start_step + self.steps
        for _, _, q, st in gq_states(self.model):
            st["tau"].assign(self.tau_at(step, self.tau0 or q.tau0))
            if done and self.hard_after:
                st["hard"].assign(1.0)
        if done and self.hard_after and self.went_hard_at is None:
            self.went_hard_at = step


def gq_recipe(bits_map, layers, base_recipe: dict | None = None, **gq_kwargs) -> dict:
    """A recipe giving each layer matched by ``bits_map`` a ``gq(bits=b, **gq_kwargs)`` kernel quantizer.

    Args:
        bits_map: ``{layer-name pattern: bits}`` (e.g. ``{"dense_in": 1, "*": 4}``) or one bit width; see
            :mod:`asr_ext.quant.bits_map` for the precedence rule.
        layers: a model (e.g. the float model) or the layer names of the model to be built.
        base_recipe: recipe to extend (its other roles and overrides are kept).
        **gq_kwargs: ``mu_init``, ``tau0``, ``stage``.

    Raises:
        ValueError: a pattern that matches no layer, bits outside 1..8, a bad GQ argument.
    """
    def make(b):
        return repr(GeneralQuantizer(bits=b, **gq_kwargs))

    return bm.recipe_from_map(bits_map, layers, make, base_recipe=base_recipe, what="gq bits map")


__all__ = ["GeneralQuantizer", "TemperatureAnnealing", "gq_centroids", "gq_centroids_np", "gq_recipe", "gq_states",
           "set_gq_hard", "set_gq_temperature"]
