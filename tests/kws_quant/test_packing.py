"""Bit-packed NNA export: bit layout, exact round trip for 1..8 bits, folding, payload size == memory projection."""
import contextlib
import json
import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kws_quant  # noqa: F401  (sets the Keras backend)
from eval.memory import project_memory
from kws_quant.export.packing import pack, pack_bits, plan_model, unpack, unpack_bits
from kws_quant.layers import QuantBatchNormalization, QuantConv1D, QuantDense
from kws_quant.models import KWSModelConfig, build_kws_model


def test_bits_are_lsb_first_in_little_endian_words():
    # 1, 2, 3 at 2 bits: stream 10 01 11 (LSB first) → byte 0b111001; one 32-bit word.
    assert pack_bits(np.array([1, 2, 3]), 2, 32) == bytes([0b111001, 0, 0, 0])
    # 5-bit values straddle bytes: 31 then 1 → bits 0..5 set; a 16-bit word.
    assert pack_bits(np.array([31, 1]), 5, 16) == bytes([0b111111, 0])
    buf = pack_bits(np.arange(33) % 2, 1, 32)  # 33 bits → two words
    assert np.frombuffer(buf, "<u4").tolist() == [0xAAAAAAAA, 0]
    v = np.random.default_rng(0).integers(0, 2 ** 7, 1001)
    assert np.array_equal(unpack_bits(pack_bits(v, 7, 64), 1001, 7), v)
    with pytest.raises(ValueError, match="value 4 does not fit in 2 bits"):
        pack_bits(np.array([4]), 2, 32)


def kernels(bits):
    """Kernel specs at ``bits``: tanh dorefa/symmetric and linear symmetric/asymmetric, per tensor and per channel."""
    specs = {"dorefa_t": f"tanh(bits={bits})",
             "dorefa_c": f"tanh(bits={bits}, per_channel=True, output_scale='max')"}
    if bits >= 2:
        specs.update({
            "sym_t": f"tanh(bits={bits}, mode='symmetric', output_scale=0.5)",
            "sym_c": f"tanh(bits={bits}, mode='symmetric', per_channel=True, output_scale='max')",
            "lin_c": f"linear(bits={bits}, per_channel=True)",
            "lin_asym_t": f"linear(bits={bits}, symmetric=False)"})
    return specs


def parallel_dense(bits, seed=0):
    """One dense layer per kernel spec, all reading the same input; biases at ``bits`` (≥2) or float."""
    keras.utils.set_random_seed(seed)
    x0 = keras.Input((7,))
    bias = f"linear(bits={max(bits, 2)}, symmetric=False)"
    outs = [QuantDense(5, kernel_quantizer=spec, bias_quantizer=bias, name=name)(x0)
            for name, spec in kernels(bits).items()]
    return keras.Model(x0, outs)


def assert_codes_equal(a, b):
    assert a.codes.dtype == b.codes.dtype and np.array_equal(a.codes, b.codes)
    assert a.scale.shape == b.scale.shape and np.array_equal(a.scale, b.scale)
    assert np.shape(a.zero_point) == np.shape(b.zero_point) and np.array_equal(a.zero_point, b.zero_point)
    assert (a.bits, a.signed) == (b.bits, b.signed)


@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_is_exact(bits, tmp_path):
    model = parallel_dense(bits)
    word_bits = (8, 16, 32, 64)[bits % 4]
    for i, preset in enumerate(("arm-neon", {"packed": True, "word_bits": word_bits}, "nna-5bit")):
        out = str(tmp_path / str(i))
        manifest = pack(model, out, preset=preset)
        restored = unpack(out)["layers"]
        for layer in model.layers[1:]:
            for role, want in layer.quantized_weights().items():
                got = restored[layer.name][role]
                assert_codes_equal(got["codes"], want)
                assert np.array_equal(got["values"], want.dequantize())
        assert os.path.getsize(os.path.join(out, "payload.bin")) == manifest["payload_nbytes"]
        assert manifest["payload_nbytes"] == project_memory(model, preset).attrs["summary"]["param_bytes"]


def test_nna_preset_packs_4bit_codes_at_5_bits(tmp_path):
    model = parallel_dense(4)
    manifest = pack(model, str(tmp_path), preset="nna-5bit")
    entry = next(t for t in manifest["layers"][0]["tensors"] if t["role"] == "kernel")
    assert (entry["bits"], entry["storage_bits"], entry["min_code"]) == (4, 5, 0)  # dorefa: unsigned
    assert entry["segments"]["codes"]["nbytes"] == 24  # 35 values · 5 bits = 175 bits → 6 words
    sym = next(t for t in manifest["layers"][2]["tensors"] if t["role"] == "kernel")
    assert (sym["signed"], sym["min_code"], sym["quantizer"]) == (True, -8, repr(model.layers[3].quantizers["kernel"]))


def conv_bn_model():
    """conv (with bias) → BN: the folded bias g·b + o is stored as float32."""
    keras.utils.set_random_seed(1)
    x0 = keras.Input((9, 3))
    x = QuantConv1D(4, 3, kernel_quantizer="tanh(bits=3, mode='symmetric')", bias_quantizer="linear(bits=8)",
                    name="conv")(x0)
    x = QuantBatchNormalization(gain_quantizer="linear(bits=8, per_channel=True)", offset_quantizer="linear(bits=8)",
                                name="bn")(x)
    model = keras.Model(x0, x)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 4)), bn.moving_variance.assign(np.linspace(0.5, 2, 4))
    return model


def test_folded_batch_norm_round_trip(tmp_path):
    model = conv_bn_model()
    pack(model, str(tmp_path), preset="nna-5bit")
    got = unpack(str(tmp_path))
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    k, b = conv.quantized_weights()["kernel"], conv.quantized_weights()["bias"]
    g, o = (c.dequantize() for c in (bn.quantized_weights()["gain"], bn.quantized_weights()["offset"]))
    kernel = got["layers"]["conv"]["kernel"]
    assert np.array_equal(kernel["codes"].codes, k.codes)
    assert kernel["codes"].scale.shape == (4,)
    np.testing.assert_allclose(kernel["values"], k.dequantize() * g, rtol=1e-6)
    bias = got["layers"]["conv"]["bias"]
    assert bias["codes"] is None
    np.testing.assert_array_equal(bias["values"], (b.dequantize() * g + o).astype(np.float32))
    assert "bn" not in got["layers"]
    layers = {entry["name"]: entry for entry in got["manifest"]["layers"]}
    assert (layers["conv"]["folded_bn"], layers["bn"]["folded_into"]) == ("bn", "conv")
    assert layers["conv"]["tensors"][1]["source"] == "conv.bias*bn.gain+bn.offset"


@pytest.mark.parametrize("recipe, preset", [("tanh4", "nna-5bit"), ("tanh1", "nna-1bit"), ("tanh5", "arm-neon"),
                                            ("float", "nna-5bit")])
def test_kws_payload_size_equals_projection(recipe, preset, tmp_path):
    model = build_kws_model(KWSModelConfig(), 12, recipe)
    manifest = pack(model, str(tmp_path), preset=preset)
    with pytest.warns(UserWarning) if recipe == "float" else contextlib.nullcontext():
        df = project_memory(model, preset)
    assert os.path.getsize(tmp_path / "payload.bin") == df.attrs["summary"]["param_bytes"]
    per_layer = {e["name"]: sum(s["nbytes"] for t in e["tensors"] for s in t["segments"].values())
                 for e in manifest["layers"]}
    assert per_layer == dict(zip(df["layer"][:-1], df["param_bytes"][:-1]))
    with open(tmp_path / "manifest.json", encoding="utf-8") as f:
        assert json.load(f) == manifest
    if recipe == "tanh4":
        restored = unpack(str(tmp_path))["layers"]
        dense, bn = model.get_layer("dense_1"), model.get_layer("bn_1")
        assert np.array_equal(restored["dense_1"]["kernel"]["codes"].codes, dense.quantized_weights()["kernel"].codes)
        assert_codes_equal(restored["dense_1"]["bias"]["codes"], bn.quantized_weights()["offset"])
        assert_codes_equal(restored["bn_in"]["gain"]["codes"], model.get_layer("bn_in").quantized_weights()["gain"])


def test_plan_reads_activation_bits_and_topology():
    plans = {p.name: p for p in plan_model(build_kws_model(KWSModelConfig(), 12, "tanh4"), "nna-5bit")}
    # per-mel CMVN, the frame pooling and the input quantizer run per frame, before the window buffer
    assert all(plans[n].front_end for n in ("bn_in", "pool", "input_quant")) and not plans["dense_in"].front_end
    assert (plans["input_quant"].input_bits, plans["input_quant"].output_bits) == ([32], 8)
    assert (plans["pool"].output_bits, plans["bn_in"].output_bits, plans["act_0"].output_bits) == (32, 32, 8)
    assert plans["flatten"].output_bits == 8
    assert plans["dense_in"].output_shape == (112,) and plans["dense_in"].folded_bn == "bn_0"
    assert [t.role for t in plans["bn_in"].tensors] == ["gain", "offset"]
    assert plans["dense_out"].activation == "linear"


def test_unpack_rejects_a_truncated_payload(tmp_path):
    pack(parallel_dense(3), str(tmp_path))
    path = tmp_path / "payload.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"payload .*payload.bin has \d+ bytes, payload_nbytes says"):
        unpack(str(tmp_path))


# -- a packed export cannot be turned against its reader -----------------------------------------------------
def _edit_manifest(folder, change):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _first_segment(m, name="codes"):
    return next(t["segments"][name] for layer in m["layers"] for t in layer["tensors"] if name in t["segments"])


def _first_entry(m):
    return next(t for layer in m["layers"] for t in layer["tensors"] if "codes" in t["segments"])


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(payload="../../secret.txt"), "must be a plain file name"),
    (lambda m: m.update(payload="/dev/zero"), "must be a plain file name"),
    (lambda m: m.update(payload=".."), "must be a plain file name"),
    (lambda m: m.update(payload=7), "payload=7 is not a str"),
    (lambda m: m.update(payload_nbytes=10 ** 12), "has \\d+ bytes, payload_nbytes says 1000000000000"),
    (lambda m: _first_segment(m).update(offset=-4), "offset=-4, nbytes=.* lie outside"),
    (lambda m: _first_segment(m).update(nbytes=10 ** 9), "lie outside the \\d+-byte payload"),
    (lambda m: _first_entry(m).update(storage_bits=0), "storage_bits=0 must be in 1..32"),
    (lambda m: _first_entry(m).update(shape=[10 ** 6, 10 ** 3]), "cannot hold 1000000000 codes"),
    (lambda m: _first_entry(m).update(dtype="object"), "dtype='object' is not an integer code type"),
    (lambda m: m.update(layers="x"), "layers='x' is not a list"),
])
def test_unpack_refuses_hostile_manifests(tmp_path, change, message):
    pack(parallel_dense(3), str(tmp_path))
    (tmp_path.parent / "secret.txt").write_text("not weights")
    _edit_manifest(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        unpack(str(tmp_path))


def test_unpack_detects_a_flipped_byte_and_a_symlinked_payload(tmp_path):
    pack(parallel_dense(3), str(tmp_path))
    payload = tmp_path / "payload.bin"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x10
    payload.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match payload_sha256"):
        unpack(str(tmp_path))
    payload.unlink()
    other = tmp_path.parent / "elsewhere.bin"
    other.write_bytes(bytes(data))
    payload.symlink_to(other)
    with pytest.raises(ValueError, match="is not a regular file"):
        unpack(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="manifest.json: not a readable manifest"):
        unpack(str(tmp_path))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4), max_leaves=20),
       st.sampled_from(["layers", "payload", "payload_nbytes", "format", "payload_sha256", "tensor.shape",
                        "tensor.storage_bits", "tensor.dtype", "tensor.min_code", "tensor.segments", "tensor.role", "tensor.bits",
                        "tensor.signed",
                        "segment.offset", "segment.nbytes", "segment.shape", "layer.tensors", "layer.name"]))
def test_unpack_fuzzed_manifest_fields_raise_value_error_only(tmp_path_factory, value, field):
    """Any JSON value in any manifest field (top level, a layer, a tensor, a segment): a ValueError naming the
    problem, or (rarely) a valid read; never another exception, never a read outside the folder."""
    folder = tmp_path_factory.mktemp("fuzz")
    pack(parallel_dense(2), str(folder))
    where, _, key = field.rpartition(".")

    def change(m):
        target = {"": m, "layer": m["layers"][0], "tensor": _first_entry(m), "segment": _first_segment(m)}[where]
        target[key] = value

    _edit_manifest(folder, change)
    try:
        unpack(str(folder))
    except ValueError:
        pass
