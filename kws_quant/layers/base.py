"""The one mechanism behind every quantized layer: quantizers by role, their state, and the QAT stage flag.

A layer declares its roles (``"input"``, ``"kernel"``, ``"bias"``, ``"gain"``, ``"offset"``, ``"output"``) and takes a
registry spec for each as ``<role>_quantizer``. ``None`` keeps that tensor in float. Each quantizer is on when the
layer's ``qat_stage`` variable is at least the quantizer's stage (METHODS §3): kernels default to stage 1, every
other role to stage 2. ``qat_stage`` starts at 2 (fully quantized) and is saved with the weights, so a checkpoint
resumes in its stage; :mod:`kws_quant.qat` switches it without rebuilding or recompiling anything.
"""
from __future__ import annotations

import keras
from keras import ops

from kws_quant import quantizers as qz

FULLY_QUANTIZED = 2


class QuantLayer(keras.layers.Layer):
    """Base class. Subclasses set ``ROLES`` and call :meth:`build_quantizers` at the end of ``build``."""

    ROLES: tuple[str, ...] = ()

    def __init__(self, quantizer_specs: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        specs = quantizer_specs or {}
        unknown = set(specs) - set(self.ROLES)
        if unknown:
            raise ValueError(f"{type(self).__name__}: no quantizer role {sorted(unknown)}; roles: {self.ROLES}")
        self._quantizers = {}
        for role in self.ROLES:
            try:
                q = qz.get(specs.get(role))
            except ValueError as e:
                raise ValueError(f"{type(self).__name__} {self.name!r}, {role}_quantizer: {e}") from None
            if q is not None:
                self._quantizers[role] = q
        self._qstate = {}
        self.qat_stage = None
        self.calibrating = False  # observe ranges at inference too (eager calls only): kws_quant.qat.calibrate

    # -- introspection (what exports and reports read) ------------------------------------------------------
    @property
    def quantizers(self) -> dict:
        """``{role: Quantizer}`` for the roles that are quantized."""
        return dict(self._quantizers)

    def stage_of(self, role: str) -> int:
        """The QAT stage from which ``role``'s quantizer is on."""
        q = self._quantizers[role]
        if q.stage is not None:
            return q.stage
        return 1 if role == "kernel" else 2

    def quantizer_state(self, role: str) -> dict:
        """The state of ``role``'s quantizer: its resolved choices and variables (e.g. a linear quantizer's
        ``symmetric``/``ema`` flags and ``min``/``max``/``seen`` moving-average range); what exports, emulations
        and tests read. ``KeyError`` naming the quantized roles when ``role`` is float."""
        if role not in self._qstate:
            raise KeyError(f"layer {self.name!r} has no quantizer state for role {role!r}; quantized roles: "
                           f"{sorted(self._qstate)}")
        return self._qstate[role]

    def weight_tensors(self) -> dict:
        """``{role: float tensor}`` of the parameters each weight role quantizes, at inference."""
        return {}

    def quantized_weights(self) -> dict:
        """``{role: IntegerCodes}`` for every quantized weight role: what an export writes."""
        tensors = self.weight_tensors()
        return {role: self._quantizers[role].codes(ops.convert_to_numpy(t), self._qstate[role])
                for role, t in tensors.items() if role in self._quantizers}

    def reset_ranges(self) -> None:
        """Forget every quantizer's range statistics (the next observed batch sets them)."""
        for role, q in self._quantizers.items():
            q.reset_range(self._qstate[role])

    # -- build / call helpers ---------------------------------------------------------------------------------
    def build_quantizers(self, shapes: dict) -> None:
        """Create the stage flag and each quantizer's state. ``shapes``: ``{role: tensor shape}``."""
        if not self._quantizers:
            return
        self.qat_stage = self.add_weight(name="qat_stage", shape=(), dtype="int32",
                                         initializer=keras.initializers.Constant(FULLY_QUANTIZED),
                                         trainable=False, aggregation="only_first_replica")
        for role, q in self._quantizers.items():
            self._qstate[role] = q.build(self, tuple(shapes[role]), role)

    def quantize_role(self, role: str, x, training=None):
        """Apply ``role``'s quantizer to ``x`` when the stage has reached it; identity otherwise."""
        q = self._quantizers.get(role)
        if q is None:
            return x
        state = self._qstate[role]
        q.observe(x, state, bool(training) or self.calibrating)
        stage = self.stage_of(role)
        if stage == 0:
            return q.fake_quant(x, state)
        # A select rather than a cond: no control flow in the step graph (cheaper dispatch, fusable), exact values,
        # and the gradient flows through the selected branch only.
        return ops.where(ops.greater_equal(self.qat_stage, stage), q.fake_quant(x, state), x)

    def get_config(self):
        config = super().get_config()
        for role in self.ROLES:
            config[f"{role}_quantizer"] = qz.serialize(self._quantizers.get(role))
        return config


def pop_quantizer_specs(roles, kwargs: dict) -> dict:
    """Take ``<role>_quantizer`` arguments out of ``kwargs``: ``{role: spec}``."""
    return {role: kwargs.pop(f"{role}_quantizer") for role in roles if f"{role}_quantizer" in kwargs}
