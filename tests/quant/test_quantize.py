"""`streamasr convert --quant`: quantize_model_dir on the tiny random model (NeMo-free, seconds)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from streamasr.errors import ModelError
from streamasr.eval.fidelity import compare
from streamasr.eval.verify import run_with_encodings
from streamasr.model_config import ModelConfig, directory_size
from streamasr.quant.compare import encoder_error
from streamasr.quant.quantize import BLOCK_SIZES, method_names, quantize_model_dir
from streamasr.runtime import Model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _const_matmuls(path) -> int:
    """MatMuls with a constant 2-D weight (the per-head position-score table is 3-D: a lookup, not a weight)."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2 for n in m.graph.node)


def _ops(path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


@pytest.fixture(scope="module")
def kquant_dir(tiny_model_dir, tmp_path_factory):
    d = _copy(tiny_model_dir, tmp_path_factory.mktemp("kq") / "m")
    quantize_model_dir(d, "int4-kquant", block_size=32, accuracy_level=4)
    return d


@pytest.fixture(scope="module")
def few_utterances(speech):
    names = sorted(speech)[:3]
    return {n: speech[n][: 16000 * 6] for n in names}


def test_int4_kquant_rewrites_encoder_and_records_it(tiny_model_dir, kquant_dir):
    n_const = _const_matmuls(tiny_model_dir / "encoder.onnx")
    assert n_const > 10  # every linear layer, pointwise conv and the subsampling projection is a MatMul
    ops = _ops(kquant_dir / "encoder.onnx")
    assert ops.get("MatMulNBits") == n_const
    assert _const_matmuls(kquant_dir / "encoder.onnx") == 0  # nothing left in fp32
    q = ModelConfig.load(kquant_dir).quantization
    assert q["method"] == "int4-kquant" and q["bits"] == 4 and q["algorithm"] == "k_quant"
    assert q["block_size"] == 32 and q["accuracy_level"] == 4
    assert q["matmuls_quantized"] == n_const and q["excluded_nodes"] == [] and q["left_fp32"] == []
    assert q["onnxruntime_version"]
    assert "fp16" in q
    m = onnx.load(str(kquant_dir / "encoder.onnx"))
    for node in m.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    # decoder and joint untouched
    for name in ("decoder.onnx", "joint.onnx"):
        assert (kquant_dir / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    # no temporary folder or fp32 copy left behind
    assert sorted(p.name for p in kquant_dir.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())


def test_size_shrinks_and_is_recorded(tiny_model_dir, kquant_dir):
    cfg = ModelConfig.load(kquant_dir)
    assert cfg.size_bytes == directory_size(kquant_dir)
    assert cfg.quantization["fp32_size_bytes"] == directory_size(tiny_model_dir)
    enc32, enc4 = (sum((d / f).stat().st_size for f in ("encoder.onnx", "encoder.onnx.data"))
                   for d in (tiny_model_dir, kquant_dir))
    assert enc4 < 0.25 * enc32  # 4-bit weights + a scale and zero point per 32 values
    assert cfg.size_bytes < directory_size(tiny_model_dir)


def test_int4_loads_transcribes_and_stays_close_to_fp32(loaded_tiny, kquant_dir, few_utterances):
    q = Model.load_dir(kquant_dir, threads=1)
    rows = compare(loaded_tiny, q, few_utterances, [560])
    assert len(rows) == len(few_utterances) + 1 and rows[-1].audio == "ALL"
    total = rows[-1]
    assert total.chunks > 5
    assert total.max_abs > 1e-3  # the weights really changed
    assert 0.9 < total.cosine_mean < 0.99999
    assert total.cosine_min <= total.cosine_mean
    assert 0 < total.mean_rel < 0.5
    assert total.tokens_model > 0  # it transcribes (a random model: the text itself means nothing)
    samples = next(iter(few_utterances.values()))
    result = q.transcribe(samples, latency_ms=160)
    assert result.chunks > 0 and result.audio_s == pytest.approx(samples.size / 16000)


def test_encoder_error_metric():
    a = [np.ones((3, 4), np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)]
    same = encoder_error(a, [x.copy() for x in a])
    assert same.max_abs == 0 and same.mean_rel == 0 and same.cosine_mean == pytest.approx(1.0)
    neg = encoder_error(a, [-x for x in a])
    assert neg.cosine_mean == pytest.approx(-1.0) and neg.mean_rel == pytest.approx(2.0)
    with pytest.raises(ValueError):
        encoder_error(a, a[:1])


@pytest.mark.parametrize("method,block,bits,op", [
    ("int8", 32, 8, "MatMulInteger"),  # int8-dynamic: DynamicQuantizeLinear + MatMulInteger
    ("int8-nbits", 32, 8, "MatMulNBits"),
    ("int4-rtn", 64, 4, "MatMulNBits"),  # K=1088 of the subsampling projection: an odd block count
    ("int4-hqq", 128, 4, "MatMulNBits"),
])
def test_other_methods(tiny_model_dir, loaded_tiny, tmp_path, few_utterances, method, block, bits, op):
    d = _copy(tiny_model_dir, tmp_path / "m")
    n_const = _const_matmuls(d / "encoder.onnx")
    record = quantize_model_dir(d, method, block_size=block)
    assert ModelConfig.load(d).quantization == record
    assert record["method"] == method and record["bits"] == bits and record["matmuls_quantized"] == n_const
    assert _ops(d / "encoder.onnx").get(op) == n_const
    if method == "int4-rtn":
        assert record["default_rtn_fallback_nodes"] == ["/pre_encode/out/MatMul"]
    name, samples = next(iter(few_utterances.items()))
    ref, ref_enc = run_with_encodings(loaded_tiny, samples, 560, nemo_compat=False)
    res, enc = run_with_encodings(Model.load_dir(d, threads=1), samples, 560, nemo_compat=False)
    err = encoder_error(ref_enc, enc)
    assert err.max_abs > 0
    assert err.cosine_mean > (0.99 if bits == 8 else 0.9)
    assert res.chunks == ref.chunks


def test_bad_method_block_size_and_double_quantization(tiny_model_dir, kquant_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    before = (d / "encoder.onnx").read_bytes()
    with pytest.raises(ModelError) as exc:
        quantize_model_dir(d, "int3")
    for name in method_names():
        assert name in str(exc.value)
    with pytest.raises(ModelError, match="not offered"):
        quantize_model_dir(d, "fp16")
    with pytest.raises(ModelError, match="block size"):
        quantize_model_dir(d, "int4-kquant", block_size=48)
    assert 48 not in BLOCK_SIZES
    with pytest.raises(ModelError, match="accuracy level"):
        quantize_model_dir(d, "int4-kquant", accuracy_level=7)
    with pytest.raises(ModelError, match="exclude"):
        quantize_model_dir(d, "int4-rtn", exclude=["/no/such/MatMul"])
    assert (d / "encoder.onnx").read_bytes() == before
    assert ModelConfig.load(d).quantization == {"method": "fp32"}
    with pytest.raises(ModelError, match="already quantized"):
        quantize_model_dir(kquant_dir, "int4-rtn")


def test_excluded_nodes_stay_fp32(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    keep = ["/pre_encode/out/MatMul", "/joint_enc/MatMul"]
    record = quantize_model_dir(d, "int4-kquant", exclude=keep)
    assert record["excluded_nodes"] == sorted(keep) and record["left_fp32"] == sorted(keep)
    assert _const_matmuls(d / "encoder.onnx") == 2
