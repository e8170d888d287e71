"""Bit-packed NNA export: one binary payload of packed weights plus a JSON manifest of the topology (METHODS §11).

The storage rules (segments, widths, word rounding, batch-norm folding) are those of :mod:`kws_quant.export.storage_plan`,
whose names are re-exported here; this module packs a plan into ``payload.bin`` + ``manifest.json`` and reads it back.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import keras
import numpy as np

from kws_quant.export.storage_plan import (FLOAT_BITS, MEMORY_PRESETS, PRESETS, WORD_BITS,  # noqa: F401
                                           LayerPlan, MemoryPreset, StoredTensor, get_preset, model_input_bits, plan_model, segment_nbytes)
from kws_quant.quantizers import CodebookCodes, IntegerCodes

FORMAT = "kws-quant-packed/1"
MANIFEST = "manifest.json"
PAYLOAD = "payload.bin"


# -- bit packing ------------------------------------------------------------------------------------------------
def min_code(bits: int, signed: bool) -> int:
    """The code stored as 0: ``-2^(bits-1)`` for signed grids, 0 for unsigned ones."""
    return -(2 ** (bits - 1)) if signed else 0


def pack_bits(values: np.ndarray, bits: int, word_bits: int) -> bytes:
    """Unsigned ``values`` (any shape, C order, each ``< 2^bits``) → LSB-first stream in little-endian words.

    Returns ``segment_nbytes(values.size, bits, word_bits)`` bytes, zero-padded to whole words.
    """
    v = np.asarray(values).reshape(-1).astype(np.uint64)
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"pack_bits: value {int(v.max())} does not fit in {bits} bits")
    stream = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).reshape(-1)
    nbytes = segment_nbytes(v.size, bits, word_bits)
    stream = np.pad(stream, (0, nbytes * 8 - stream.size))
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_bits(buf: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` values, uint64 ``[count]``."""
    stream = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")[:count * bits]
    if stream.size != count * bits:
        raise ValueError(f"unpack_bits: {len(buf)} bytes hold fewer than {count} values of {bits} bits")
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return (stream.reshape(count, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _encode(t: StoredTensor, word_bits: int) -> dict:
    """``{segment: bytes}`` of one tensor, in :meth:`StoredTensor.segments` order."""
    if t.codes is None:
        return {"values": _words(t.values.astype("<f4").tobytes(), word_bits)}
    c = t.codes
    if isinstance(c, CodebookCodes):
        return {"codes": pack_bits(c.indices, t.storage_bits, word_bits),
                "codebook": _words(np.asarray(c.codebook, "<f4").tobytes(), word_bits)}
    u = c.codes.astype(np.int64) - min_code(c.bits, c.signed)
    if u.size and (u.min() < 0 or u.max() >= 2 ** c.bits):
        raise ValueError(f"{t.source}: codes outside the {c.bits}-bit {'signed' if c.signed else 'unsigned'} grid")
    out = {"codes": pack_bits(u, t.storage_bits, word_bits),
           "scale": _words(np.asarray(c.scale, "<f4").tobytes(), word_bits)}
    if not c.signed:
        out["zero_point"] = _words(np.asarray(c.zero_point, "<f4").tobytes(), word_bits)
    return out


def _words(raw: bytes, word_bits: int) -> bytes:
    return raw + bytes(segment_nbytes(len(raw), 8, word_bits) - len(raw))


# -- export / import ----------------------------------------------------------------------------------------------
def pack(model: keras.Model, path: str, preset="nna-5bit", word_bits: int | None = None,
         packed: bool | None = None) -> dict:
    """Write ``path/payload.bin`` (all packed weights, scales, zero points, biases) and ``path/manifest.json``.

    Args:
        model: a built functional/Sequential model.
        path: output directory (created).
        preset, word_bits, packed: as :func:`get_preset`.

    Returns:
        The manifest: format, preset, word size, byte/bit order, payload size, and per layer (in order) its type,
        shapes, activation, activation bits, quantizer reprs, folded batch-norm, and per stored tensor its role,
        source, shape, code dtype, bits, storage bits, ``min_code`` and ``{segment: {offset, nbytes, shape}}``.
    """
    preset = get_preset(preset, word_bits, packed)
    plans = plan_model(model, preset)
    os.makedirs(path, exist_ok=True)
    layers, offset = [], 0
    with open(os.path.join(path, PAYLOAD), "wb") as f:
        for plan in plans:
            entries = []
            for t in plan.tensors:
                blobs, sizes = _encode(t, preset.word_bits), t.nbytes(preset.word_bits)
                segments = {}
                for seg, blob in blobs.items():
                    assert len(blob) == sizes[seg], (t.source, seg, len(blob), sizes[seg])
                    f.write(blob)
                    segments[seg] = {"offset": offset, "nbytes": len(blob), "shape": _segment_shape(t, seg)}
                    offset += len(blob)
                entries.append(_tensor_entry(t, segments))
            layers.append(_layer_entry(plan, entries))
    with open(os.path.join(path, PAYLOAD), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    manifest = {"format": FORMAT, "model": model.name, "preset": dataclasses.asdict(preset),
                "word_bits": preset.word_bits, "byte_order": "little", "bit_order": "lsb-first",
                "payload": PAYLOAD, "payload_nbytes": offset, "payload_sha256": digest, "layers": layers}
    text = json.dumps(manifest, indent=1)
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        f.write(text)
    return json.loads(text)


def _segment_shape(t: StoredTensor, seg: str) -> list:
    if seg in ("codes", "values"):
        return list(t.values.shape)
    if seg == "codebook":
        return [int(t.codes.codebook.size)]
    return list(np.shape(t.codes.scale if seg == "scale" else t.codes.zero_point))


def _tensor_entry(t: StoredTensor, segments: dict) -> dict:
    c = t.codes
    affine = isinstance(c, IntegerCodes)
    return {"role": t.role, "source": t.source, "quantizer": t.quantizer, "shape": list(t.values.shape),
            "bits": t.bits, "storage_bits": t.storage_bits,
            "signed": bool(c.signed) if affine else None if c is None else False,
            "min_code": min_code(c.bits, c.signed) if affine else None if c is None else 0,
            "dtype": "float32" if c is None else np.dtype(c.codes.dtype if affine else c.indices.dtype).name,
            "segments": segments}


def _layer_entry(plan: LayerPlan, tensors: list) -> dict:
    return {"name": plan.name, "type": plan.type, "input_shapes": [list(s) for s in plan.input_shapes],
            "output_shape": list(plan.output_shape), "activation": plan.activation,
            "input_bits": plan.input_bits, "output_bits": plan.output_bits, "quantizers": plan.quantizers,
            "folded_bn": plan.folded_bn, "folded_into": plan.folded_into, "tensors": tensors}


def unpack(path: str) -> dict:
    """Read a :func:`pack` directory.

    Everything read back is checked before use: the manifest is JSON of this format; the payload is a plain file
    name inside ``path`` (no separator, no ``..``), a regular file of exactly ``payload_nbytes`` bytes (checked
    before reading) whose SHA-256 equals ``payload_sha256``; every segment lies inside the payload, with a
    non-negative offset and a size that its shape and bit width fill exactly.

    Returns:
        ``{"manifest": dict, "layers": {layer: {role: {"codes": IntegerCodes | CodebookCodes | None, "values":
        float32 array}}}}``
        with the exact codes, scales and zero points that were packed (``values = codes.dequantize()``), and the
        float32 values of float tensors. Layers without stored tensors are absent.
    Raises:
        ValueError: naming the file and the field that is wrong.
    """
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {MANIFEST} (not a packed export)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest_path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{manifest_path}: format {got!r} is not {FORMAT!r}")
    payload = _read_payload(path, manifest_path, manifest)
    layers = {}
    for i, layer in enumerate(_field(manifest, "layers", list, manifest_path)):
        where = f"{manifest_path}: layers[{i}]"
        name = _field(layer, "name", str, where)
        for j, entry in enumerate(_field(layer, "tensors", list, where)):
            check_entry(entry, len(payload), f"{where}.tensors[{j}]")
            layers.setdefault(name, {})[entry["role"]] = _decode(entry, payload)
    return {"manifest": manifest, "layers": layers}


def _field(obj, key, kind, where):
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        value = obj.get(key) if isinstance(obj, dict) else obj
        raise ValueError(f"{where}: {key}={value!r} is not a {kind.__name__}")
    return obj[key]


def _read_payload(path: str, manifest_path: str, manifest: dict) -> bytes:
    name = _field(manifest, "payload", str, manifest_path)
    if not name or name in (".", "..") or os.path.basename(name) != name or "/" in name or "\\" in name:
        raise ValueError(f"{manifest_path}: payload={name!r} must be a plain file name inside {path}")
    size = _field(manifest, "payload_nbytes", int, manifest_path)
    file = os.path.join(path, name)
    if os.path.islink(file) or not os.path.isfile(file):
        raise ValueError(f"{manifest_path}: payload {file} is not a regular file")
    if os.path.getsize(file) != size:
        raise ValueError(f"{manifest_path}: payload {file} has {os.path.getsize(file)} bytes, payload_nbytes says "
                         f"{size}")
    with open(file, "rb") as f:
        payload = f.read(size + 1)
    if len(payload) != size:
        raise ValueError(f"{manifest_path}: payload {file} changed while being read")
    want = manifest.get("payload_sha256")
    if want is not None and hashlib.sha256(payload).hexdigest() != want:
        raise ValueError(f"{manifest_path}: payload {file} does not match payload_sha256 (corrupt or altered)")
    return payload


def check_entry(entry: dict, payload_nbytes: int, where: str) -> None:
    """Raise ``ValueError`` unless a manifest tensor entry decodes inside a payload of ``payload_nbytes``."""
    for key, kind in (("role", str), ("dtype", str), ("shape", list), ("segments", dict)):
        _field(entry, key, kind, where)
    shape = entry["shape"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"{where}: shape={shape!r} must be non-negative integers")
    count = int(np.prod(shape, dtype=np.int64))
    for name, seg in entry["segments"].items():
        w = f"{where}.segments.{name}"
        off, nb, sshape = (_field(seg, k, t, w) for k, t in (("offset", int), ("nbytes", int), ("shape", list)))
        if off < 0 or nb < 0 or off + nb > payload_nbytes:
            raise ValueError(f"{w}: offset={off}, nbytes={nb} lie outside the {payload_nbytes}-byte payload")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in sshape):
            raise ValueError(f"{w}: shape={sshape!r} must be non-negative integers")
        if name == "codes":
            bits = _field(entry, "storage_bits", int, where)
            if not 1 <= bits <= 32:
                raise ValueError(f"{where}: storage_bits={bits} must be in 1..32")
            if sshape != shape or nb * 8 < count * bits:
                raise ValueError(f"{w}: {nb} bytes cannot hold {count} codes of {bits} bits (shape {sshape})")
            if entry["dtype"] not in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64"):
                raise ValueError(f"{where}: dtype={entry['dtype']!r} is not an integer code type")
            _field(entry, "min_code", int, where)
            if not 1 <= _field(entry, "bits", int, where) <= 32:
                raise ValueError(f"{where}: bits={entry['bits']} must be in 1..32")
            if "codebook" not in entry["segments"] and not isinstance(entry.get("signed"), bool):
                raise ValueError(f"{where}: signed={entry.get('signed')!r} is not a bool")
        elif nb < 4 * int(np.prod(sshape, dtype=np.int64)):
            raise ValueError(f"{w}: {nb} bytes cannot hold float32 values of shape {sshape}")
    need = ("values",) if entry["dtype"] == "float32" else ("codes",)
    missing = [n for n in need if n not in entry["segments"]]
    if missing or (entry["dtype"] == "float32" and entry["segments"]["values"]["shape"] != shape):
        raise ValueError(f"{where}: segments {sorted(entry['segments'])} do not describe a {entry['dtype']} tensor of "
                         f"shape {shape}")


def _decode(entry: dict, payload: bytes) -> dict:
    def segment(name, dtype="<f4"):
        s = entry["segments"][name]
        raw = payload[s["offset"]:s["offset"] + s["nbytes"]]
        n = int(np.prod(s["shape"], dtype=np.int64))
        return np.frombuffer(raw, dtype, count=n).reshape(s["shape"]).astype(np.float32)

    if entry["dtype"] == "float32":
        return {"codes": None, "values": segment("values")}
    s = entry["segments"]["codes"]
    count = int(np.prod(entry["shape"], dtype=np.int64))
    u = unpack_bits(payload[s["offset"]:s["offset"] + s["nbytes"]], count, entry["storage_bits"])
    codes = (u.astype(np.int64) + entry["min_code"]).astype(entry["dtype"]).reshape(entry["shape"])
    if "codebook" in entry["segments"]:
        c = CodebookCodes(codes, segment("codebook"), entry["bits"])
        return {"codes": c, "values": c.dequantize()}
    scale = segment("scale")
    zero_point = segment("zero_point") if "zero_point" in entry["segments"] else np.zeros_like(scale)
    c = IntegerCodes(codes, scale, zero_point, entry["bits"], entry["signed"])
    return {"codes": c, "values": c.dequantize()}
