"""S8BQAT (METHODS §4-5; Zhen et al. 2022): Lloyd-Max codebooks, the MRACos regularizer and the hard compressor.

Workflow on any model built from ``kws_quant`` quantized layers (KWS or RNN-T)::

    float_model.fit(...)                                           # 1. a trained float model
    recipe = fit_centroids(float_model, {"dense_in": 8, "*": 5})   # 2. per-tensor Lloyd-Max codebooks → recipe
    qat_model = build_kws_model(config, n, recipe=recipe)          # 3. the QAT twin (or with_quantizers(float_model,
    transfer_weights(float_model, qat_model)                       #    recipe) for any Functional model)
    qat_model.compile(...)
    qat_model.fit(..., callbacks=[MRACosWarmup(1e-2, warmup_steps=500), HardCompressor(every=1000)])

How the regularizer reaches the loss: the ``lloyd_max`` quantizer creates a non-trainable ``<role>_mracos_lambda``
variable on its layer, and in every *training* call of the layer it adds ``λ · mean R(W)`` with ``layer.add_loss``
(from :meth:`LloydMaxQuantizer.observe`, which ``QuantLayer.quantize_role`` runs at every call, whatever the QAT
stage). ``model.fit``'s ``compute_loss`` sums ``model.losses``, so no custom ``train_step`` or model wrapper is
needed, and it works the same for Functional, Sequential and subclassed models. λ starts at 0 (no regularization);
:class:`MRACosWarmup` ramps it from 0 over a warm-up. λ is saved with the weights, so a resumed run continues with it.
The total added term is ``Σ_tensors λ · mean_W R(W)`` (a per-tensor mean, summed over the regularized tensors, like a
Keras kernel regularizer).
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from asr_ext.quant import bits_map as bm
from asr_ext.quant.codebook import CodebookCodes, boundaries, make_codes, nearest_index, nearest_index_np
from asr_ext.quant.lloyd_max import lloyd_max
from kws_quant.layers import quant_layers
from kws_quant.quantizers.base import WEIGHT_ROLES, Quantizer, check_bits
from kws_quant.quantizers.registry import register_quantizer

NO_FLOAT_MODEL = "centroids requested before a float model exists"


# -- the regularizer ---------------------------------------------------------------------------------------------
def mracos(w, centroids):
    """MRACos ``R(w)`` elementwise (METHODS §5), differentiable in ``w``; a tensor like ``w``.

    Between adjacent distinct centroids ``c_k ≤ w ≤ c_{k+1}``: ``R = |cos(π (w - m_k)/Δ_k)|``, computed as the equal
    ``sin(π · min(w - c_k, c_{k+1} - w) / Δ_k)`` so that ``R`` is exactly 0 at every centroid (and 1 at every
    mid-point up to float rounding of the argument). Outside ``[c_1, c_K]``: ``π |w - c_edge| / Δ_edge`` (the edge
    cell's slope, so R is continuous). Repeated centroids are merged first. A codebook with a single distinct value
    ``c`` gives ``R = π |w - c|`` (Δ taken as 1).
    """
    u = np.unique(np.asarray(centroids, np.float32))
    w = ops.convert_to_tensor(w)
    dtype = w.dtype if "float" in str(w.dtype) else "float32"
    w = ops.cast(w, dtype)
    pi = math.pi
    if len(u) == 1:
        return pi * ops.abs(w - ops.cast(u[0], dtype))
    uc = ops.cast(u, dtype)
    flat = ops.reshape(w, (-1,))
    k = ops.clip(ops.searchsorted(uc, flat, side="right") - 1, 0, len(u) - 2)
    k = ops.reshape(ops.cast(k, "int32"), ops.shape(w))
    lo, hi = ops.take(uc, k), ops.take(uc, k + 1)
    width = hi - lo
    inside = ops.sin(pi * ops.maximum(ops.minimum(w - lo, hi - w), 0.0) / width)
    first, last = float(u[0]), float(u[-1])
    below = pi * (first - w) / float(u[1] - u[0])
    above = pi * (w - last) / float(u[-1] - u[-2])
    return ops.where(w < first, below, ops.where(w > last, above, inside))


# -- the quantizer -----------------------------------------------------------------------------------------------
@register_quantizer
class LloydMaxQuantizer(Quantizer):
    """Nearest centroid of a fixed per-tensor codebook, with a straight-through gradient (S8BQAT).

    ``"lloyd_max(bits=5, centroids=(c_1, ..., c_32))"``; the codebook normally comes from :func:`fit_centroids` on a
    trained float model. The codebook lives in the config (a tuple of float32-exact Python floats), so ``repr``, the
    registry and ``.keras`` files round-trip it exactly.

    Args:
        bits: 1..8; the codebook has exactly ``2^bits`` entries (indices are b-bit).
        centroids: ``2^bits`` finite numbers in ascending order (repeats allowed). Rounded to float32.
        stage: two-stage QAT stage from which the forward quantization is on (``None``: by role, kernels 1).

    State on the layer (weight roles): ``<role>_mracos_lambda`` (non-trainable, starts at 0), the MRACos weight; when
    it is non-zero each training call adds ``λ · mean mracos(W)`` to the layer's losses (see the module docstring).
    """

    name = "lloyd_max"

    def __init__(self, bits: int = 4, centroids=None, stage: int | None = None):
        super().__init__(check_bits("lloyd_max", bits, 1, 8), stage)
        k = 2 ** self.bits
        if centroids is None:
            raise ValueError(f"lloyd_max: centroids are required ({NO_FLOAT_MODEL}?); get them with "
                             "asr_ext.quant.fit_centroids(trained_float_model, bits)")
        try:
            c = np.asarray(centroids, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"lloyd_max: centroids={centroids!r} is not a sequence of numbers") from None
        if c.ndim != 1 or len(c) != k:
            raise ValueError(f"lloyd_max: bits={self.bits} needs exactly {k} centroids; got shape {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("lloyd_max: centroids must be finite")
        c = c.astype(np.float32)
        if np.any(np.diff(c) < 0):
            raise ValueError("lloyd_max: centroids must be in ascending order")
        self.centroids = tuple(float(v) for v in c)
        self._c = c
        self._t = boundaries(c)

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    @property
    def codebook(self) -> np.ndarray:
        """The centroids as a float32 array ``(2^bits,)``."""
        return self._c.copy()

    def build(self, layer, shape, role):
        state = {"role": role}
        if role in WEIGHT_ROLES:
            state["lam"] = layer.add_weight(name=f"{role}_mracos_lambda", shape=(), initializer="zeros",
                                            trainable=False, autocast=False, aggregation="only_first_replica")
            state["add_loss"] = layer.add_loss
        return state

    def regularization(self, x, lam=1.0):
        """``lam · mean(mracos(x))``, a float32 scalar tensor."""
        return ops.cast(lam, "float32") * ops.mean(ops.cast(mracos(x, self._c), "float32"))

    def observe(self, x, state, training):
        if training and state and "lam" in state:
            state["add_loss"](self.regularization(x, state["lam"]))

    def hard(self, x):
        """Nearest centroid, no gradient."""
        idx = nearest_index(ops.stop_gradient(x), self._t)
        return ops.take(ops.cast(self._c, x.dtype), idx)

    def fake_quant(self, x, state=None):
        """Nearest centroid, gradient identity. Written ``c + (x - sg(x))`` rather than ``x + sg(c - x)``: the same
        gradient, and the forward value is the centroid exactly (``x + (c - x)`` can be off by one ulp)."""
        x = ops.convert_to_tensor(x)
        return self.hard(x) + (x - ops.stop_gradient(x))

    def codes(self, x, state=None) -> CodebookCodes:
        return make_codes(ops.convert_to_numpy(x), self._c, self.bits)


# -- fitting the codebooks ---------------------------------------------------------------------------------------
def _check_float_model(model, trained):
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"{NO_FLOAT_MODEL}: expected a trained Keras model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"{NO_FLOAT_MODEL}: model {model.name!r} is not built; build and train it first")
    layers = [layer for layer in bm.kernel_layers(model) if getattr(layer, "kernel", None) is not None]
    if not layers:
        raise ValueError(f"{NO_FLOAT_MODEL}: model {model.name!r} has no built quantized layer with a kernel "
                         "(QuantDense/QuantConv…)")
    if trained is None:
        opt = getattr(model, "optimizer", None)
        steps = int(ops.convert_to_numpy(opt.iterations)) if opt is not None else 0
        if steps == 0:
            raise ValueError(f"{NO_FLOAT_MODEL}: model {model.name!r} has not been trained (its optimizer has made "
                             "no step); train the float model first, or pass trained=True if its weights were "
                             "loaded from a trained checkpoint")
    return layers


def fit_centroids(model, bits, base_recipe: dict | None = None, snap_int8: bool = False, trained: bool | None = None,
                  **lloyd_kwargs) -> dict:
    """Per-tensor Lloyd-Max codebooks for the kernels of a trained float model, as a recipe for its QAT twin.

    Args:
        model: the trained float model (built from ``kws_quant`` quantized layers; nested models are searched).
        bits: one bit width (1..8) for every kernel, or a bits map ``{layer-name pattern: bits}``
            (:mod:`asr_ext.quant.bits_map`; layers no pattern matches keep the base recipe's kernel spec).
        base_recipe: recipe whose other roles (bias, input, activation, batch-norm) and overrides to keep.
        snap_int8: snap each codebook to its tensor's int8 grid ``max|W|/127``.
        trained: ``None`` checks that the model's optimizer has made at least one step; ``True`` skips the check (for
            weights loaded from a checkpoint into an uncompiled model).
        **lloyd_kwargs: ``tol``, ``max_iter``, ``guard_uniform`` for :func:`lloyd_max`.

    Returns:
        A recipe dict whose ``layers`` holds, per fitted layer (escaped exact name), ``{"kernel":
        "lloyd_max(bits=b, centroids=(...), stage=None)"}``; usable by ``build_kws_model(..., recipe=...)``,
        ``kws_quant.models.get_recipe`` and :func:`asr_ext.quant.with_quantizers`.

    Raises:
        ValueError: "centroids requested before a float model exists" for an unbuilt or untrained model or one with
            no kernels; a bad bit width; a bits-map pattern that matches no layer.
    """
    layers = _check_float_model(model, trained)
    by_name = {layer.name: layer for layer in layers}
    values = bm.resolve(bits, list(by_name), what="fit_centroids bits map")
    for name, b in values.items():
        check_bits(f"fit_centroids (layer {name!r})", b, 1, 8)
    specs = {}
    for name, b in values.items():
        c = lloyd_max(ops.convert_to_numpy(by_name[name].kernel), b, snap_int8=snap_int8, **lloyd_kwargs)
        specs[name] = repr(LloydMaxQuantizer(bits=int(b), centroids=tuple(float(v) for v in c)))
    return bm.recipe_from_map({bm.escape_pattern(n): n for n in specs}, list(by_name), specs.__getitem__,
                              base_recipe=base_recipe, what="fit_centroids")


# -- helpers over a model's codebook quantizers ------------------------------------------------------------------
def lloyd_max_roles(model):
    """``[(layer, role, quantizer)]`` for every role of ``model``'s quantized layers with a ``lloyd_max`` quantizer."""
    return [(layer, role, q) for layer in quant_layers(model) for role, q in layer.quantizers.items()
            if isinstance(q, LloydMaxQuantizer)]


def set_mracos_lambda(model, value: float) -> int:
    """Set λ of every ``lloyd_max`` weight quantizer of ``model``; returns how many were set."""
    n = 0
    for layer, role, _ in lloyd_max_roles(model):
        lam = layer.quantizer_state(role).get("lam")
        if lam is not None:
            lam.assign(float(value))
            n += 1
    return n


def compress_to_centroids(model) -> int:
    """Hard compressor: assign every ``lloyd_max``-quantized weight variable its nearest centroid, in place.

    Afterwards each such tensor takes at most ``2^bits`` distinct values. Returns the number of tensors compressed.
    Roles whose tensor is not a variable (e.g. a folded batch-norm gain) are skipped.
    """
    n = 0
    for layer, role, q in lloyd_max_roles(model):
        var = getattr(layer, role, None)
        if not isinstance(var, keras.Variable):
            continue
        w = ops.convert_to_numpy(var)
        var.assign(q.codebook[nearest_index_np(w, q.codebook)].astype(w.dtype))
        n += 1
    return n


def _step(model) -> int:
    opt = getattr(model, "optimizer", None)
    return int(ops.convert_to_numpy(opt.iterations)) if opt is not None else 0


class MRACosWarmup(keras.callbacks.Callback):
    """Ramp the MRACos weight λ linearly from 0 to ``lam`` over ``warmup_steps`` optimizer steps.

    ``λ(step) = lam · clip((step - start_step) / warmup_steps, 0, 1)`` (``warmup_steps=0``: ``lam`` from
    ``start_step`` on), set before every training batch from ``optimizer.iterations``, so a resumed run continues
    the ramp where it was.
    """

    def __init__(self, lam: float, warmup_steps: int = 1000, start_step: int = 0):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise ValueError(f"MRACosWarmup: lam={lam!r} is not allowed; allowed: a number >= 0")
        for name, v in (("warmup_steps", warmup_steps), ("start_step", start_step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"MRACosWarmup: {name}={v!r} must be a non-negative integer")
        self.lam, self.warmup_steps, self.start_step = float(lam), warmup_steps, start_step
        self._last = None

    def value_at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return self.lam
        return self.lam * min(1.0, (step - self.start_step) / self.warmup_steps)

    def on_train_begin(self, logs=None):
        self._last = None
        if not lloyd_max_roles(self.model):
            raise ValueError("MRACosWarmup: the model has no lloyd_max quantizer (build it from fit_centroids' "
                             "recipe)")

    def on_train_batch_begin(self, batch, logs=None):
        value = self.value_at(_step(self.model))
        if value != self._last:
            set_mracos_lambda(self.model, value)
            self._last = value


class HardCompressor(keras.callbacks.Callback):
    """Every ``every`` optimizer steps, snap each latent ``lloyd_max`` weight to its nearest centroid (§5).

    Args:
        every: the period P in optimizer steps (``optimizer.iterations`` after the step, so resumes keep the phase).
        at_end: also compress when training ends, so the trained model's tensors hold ≤ 2^b values each.
    """

    def __init__(self, every: int = 1000, at_end: bool = True):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"HardCompressor: every={every!r} must be a positive integer")
        self.every, self.at_end = every, bool(at_end)
        self.compressed_at: list[int] = []
        """Optimizer steps at which a compression ran."""

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step > 0 and step % self.every == 0 and (not self.compressed_at or self.compressed_at[-1] != step):
            compress_to_centroids(self.model)
            self.compressed_at.append(step)

    def on_train_end(self, logs=None):
        if self.at_end:
            step = _step(self.model)
            if not self.compressed_at or self.compressed_at[-1] != step:
                compress_to_centroids(self.model)
                self.compressed_at.append(step)


__all__ = ["NO_FLOAT_MODEL", "CodebookCodes", "HardCompressor", "LloydMaxQuantizer", "MRACosWarmup",
           "compress_to_centroids", "fit_centroids", "lloyd_max_roles", "mracos", "set_mracos_lambda"]
