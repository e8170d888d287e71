"""Quantizer base class, integer-code and codebook containers and straight-through helpers.

A quantizer is an immutable *how* (bits, mode, granularity). Any state it needs (moving-average ranges) is created
on the layer that uses it by :meth:`Quantizer.build`, so a quantizer object can be shared, compared and serialized
freely, and the state is saved with the layer's own variables (TFMOT's split of *what* and *how*).
"""
from __future__ import annotations

import dataclasses
import inspect

import keras
import numpy as np
from keras import ops

WEIGHT_ROLES = ("kernel", "bias", "gain", "offset")
"""Roles whose tensor is a parameter: ranges come from its current value."""
DATA_ROLES = ("input", "output")
"""Roles whose tensor is data: ranges come from a moving average of batch statistics."""


@dataclasses.dataclass(frozen=True)
class IntegerCodes:
    """What an export writes: ``value = scale * (codes - zero_point)``.

    Attributes:
        codes: integer array with the quantized tensor's shape.
        scale: float32 array broadcastable to ``codes`` (shape ``()`` or ``(channels,)`` on the last axis).
        zero_point: float32 array like ``scale``; an integer for linear quantizers, ``(2^b-1)/2`` for dorefa.
        bits: bit width b.
        signed: whether ``codes`` are centred on zero (symmetric grids) or in ``[0, 2^b-1]``.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    signed: bool

    def dequantize(self) -> np.ndarray:
        """The real values, float32, same shape as ``codes``."""
        return (self.scale * (self.codes.astype(np.float32) - self.zero_point)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CodebookCodes:
    """What an export writes for a codebook quantizer: ``value = codebook[indices]``.

    :class:`IntegerCodes` describes affine grids (``scale * (codes - zero_point)``) and cannot
    hold a non-uniform codebook, hence this container.

    Attributes:
        indices: unsigned integer array (``uint8``, values in ``[0, 2^bits)``) with the quantized tensor's shape.
        codebook: float32 array of shape ``(2^bits,)``, sorted ascending (it may repeat values).
        bits: bit width b of each index.
    """

    indices: np.ndarray
    codebook: np.ndarray
    bits: int

    def __post_init__(self):
        if self.codebook.ndim != 1 or len(self.codebook) != 2 ** self.bits:
            raise ValueError(f"CodebookCodes: codebook of shape {self.codebook.shape} does not hold 2^{self.bits} "
                             f"= {2 ** self.bits} entries")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(self.codebook)):
            raise ValueError(f"CodebookCodes: indices outside [0, {len(self.codebook)})")

    @property
    def num_values(self) -> int:
        """Distinct values the tensor actually takes."""
        return len(np.unique(self.dequantize()))

    def dequantize(self) -> np.ndarray:
        """The real values, float32, same shape as ``indices``."""
        return self.codebook[self.indices.astype(np.int64)].astype(np.float32)


class Quantizer(keras.quantizers.Quantizer):
    """Base class of every quantizer in the registry.

    Subclasses set ``name`` (the registry key), validate their arguments in ``__init__``, implement
    :meth:`fake_quant` and :meth:`codes`, and may override :meth:`build`/:meth:`observe` when they keep state.

    Attributes:
        bits: the precision every report reads.
        stage: the two-stage QAT stage (1 or 2) from which this quantizer is on; ``None`` lets the layer decide
            by role (weights of linear ops: 1, everything else: 2).
    """

    name = "quantizer"

    def __init__(self, bits: int, stage: int | None = None):
        super().__init__(output_dtype="int8")
        self.bits = bits
        if stage not in (None, 0, 1, 2):
            raise ValueError(f"{type(self).__name__}: stage={stage!r} is not allowed; allowed: None, 0, 1, 2")
        self.stage = stage

    # -- what subclasses provide -------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        """Number of distinct values a tensor (or channel) can take."""
        raise NotImplementedError

    def build(self, layer: keras.layers.Layer, shape: tuple, role: str) -> dict:
        """Create the state this quantizer needs on ``layer`` for a tensor of ``shape``; returns it by name."""
        return {}

    def observe(self, x, state: dict, training: bool) -> None:
        """Update range statistics from a batch (only when ``training``). Stateless quantizers do nothing."""

    def reset_range(self, state: dict) -> None:
        """Forget the range statistics, so the next observed batch sets them (post-training calibration)."""

    def fake_quant(self, x, state: dict):
        """Quantize-dequantize ``x`` with a straight-through gradient. Same shape and dtype as ``x``."""
        raise NotImplementedError

    def codes(self, x, state: dict | None = None) -> IntegerCodes:
        """The integer codes and scale an export writes for ``x`` (numpy in, numpy out)."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------------------
    def __call__(self, x, state: dict | None = None, training: bool = False):
        """Observe (in training) and fake-quantize ``x``."""
        state = state or {}
        self.observe(x, state, training)
        return self.fake_quant(x, state)

    def get_config(self) -> dict:
        """Every ``__init__`` argument by name, so ``type(q)(**q.get_config())`` is an equal quantizer."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self"}

    @classmethod
    def from_config(cls, config: dict) -> "Quantizer":
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted((k, repr(v)) for k, v in self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.name}({args})"


# -- helpers shared by the quantizers ----------------------------------------------------------------------
def check_bits(owner: str, bits, low: int, high: int, why: str = "") -> int:
    """Validate an integer bit width in ``[low, high]``; raise ``ValueError`` naming the value otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not low <= bits <= high:
        extra = f" ({why})" if why else ""
        raise ValueError(f"{owner}: bits={bits!r} is not allowed{extra}; allowed: integers {low}..{high}")
    return int(bits)


def check_choice(owner: str, arg: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: {arg}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")


def reduce_axes(x, per_channel: bool):
    """Axes to reduce for a per-tensor (all) or per-channel (all but the last) statistic."""
    rank = len(x.shape)
    return tuple(range(rank - 1)) if per_channel and rank > 0 else None


def channel_vector(v) -> np.ndarray:
    """A keepdims statistic as float32 numpy: shape ``()`` for one value, ``(channels,)`` otherwise."""
    v = np.asarray(ops.convert_to_numpy(v), np.float32)
    return v.reshape(()) if v.size == 1 else v.reshape(-1)


def ste(x, x_q):
    """Forward exactly ``x_q`` (``x - sg(x)`` is 0), backward identity with respect to ``x``."""
    return ops.stop_gradient(x_q) + (x - ops.stop_gradient(x))
