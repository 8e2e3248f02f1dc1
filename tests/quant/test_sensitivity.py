"""`streamasr analyze-sensitivity` and `--quant int4-mixed` on the tiny random model (NeMo-free, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamasr.errors import ModelError
from streamasr.model_config import ModelConfig
from streamasr.quant.compare import encoder_error, run_recording
from streamasr.quant.graph import constant_weight_matmuls
from streamasr.quant.quantize import quantize_model_dir
from streamasr.quant.sensitivity import (
    SensitivityReport,
    _EncoderWeights,
    analyze,
    choose_kept,
    fake_quantize,
    group_name,
)
from streamasr.runtime import Model
from streamasr.runtime.backend import session_options


@pytest.fixture(scope="module")
def utterances(speech):
    names = sorted(speech)[:3]
    return {n: speech[n][: 16000 * 8] for n in names}


@pytest.fixture(scope="module")
def report(tiny_model_dir, utterances) -> SensitivityReport:
    return analyze(tiny_model_dir, utterances, 560, threads=1)


def _joint_inputs(model: Model, audio: dict) -> list[np.ndarray]:
    out = []
    for samples in audio.values():
        out += run_recording(model, samples, 560, nemo_compat=False).projections
    return out


@pytest.mark.parametrize("method,block", [("int4-kquant", 32), ("int4-rtn", 32)])
def test_simulated_weights_are_the_int4_graphs_weights(tiny_model_dir, tmp_path, utterances, method, block):
    """The analysis's quantize-dequantize image reproduces the real MatMulNBits graph (fp32 accumulation,
    accuracy_level 0): otherwise it would rank a different model than the one int4-mixed builds."""
    real_dir = shutil.copytree(tiny_model_dir, tmp_path / "q")
    quantize_model_dir(real_dir, method, block_size=block, accuracy_level=0)
    real = Model.load_dir(real_dir, threads=1)
    weights = _EncoderWeights(tiny_model_dir / "encoder.onnx")
    opts = session_options(1)
    values = [ort.OrtValue.ortvalue_from_numpy(fake_quantize(weights.read(m), method, block)) for m in weights.matmuls]
    for m, v in zip(weights.matmuls, values):
        opts.add_initializer(weights.weight_of[m], v)
    fp32 = Model.load_dir(tiny_model_dir, threads=1)
    simulated = fp32.with_backend(fp32.backend.with_encoder(tiny_model_dir / "encoder.onnx", opts))
    sim_vs_real = encoder_error(_joint_inputs(real, utterances), _joint_inputs(simulated, utterances))
    real_vs_fp32 = encoder_error(_joint_inputs(fp32, utterances), _joint_inputs(real, utterances))
    assert real_vs_fp32.mean_rel > 0.05  # int4 is far from fp32 ...
    assert sim_vs_real.mean_rel < 1e-4  # ... and the simulation is the int4 graph up to float rounding
    w = weights.read(weights.matmuls[1])
    q = fake_quantize(w, method, block)
    assert q.shape == w.shape and q.dtype == np.float32
    for col in (0, 5):  # int4: at most 16 levels per block of `block` rows
        assert len(np.unique(q[:block, col])) <= 16


def test_analysis_ranks_every_layer_on_real_speech(report, tiny_model_dir, tmp_path):
    groups = {g.group: g for g in report.groups}
    assert set(groups) == {"pre_encode", "layers.0", "layers.1", "joint_enc"}
    assert sorted(g.rank for g in report.groups) == [1, 2, 3, 4]
    ranked = report.ranked()
    assert [g.joint_rel for g in ranked] == sorted((g.joint_rel for g in ranked), reverse=True)
    for g in report.groups:
        assert 0.01 < g.weight_rel_err < 0.3  # a 4-bit image of the weights
        assert g.joint_rel > 0 and 0 <= g.token_agreement <= 1
    assert groups["joint_enc"].mean_rel == 0  # after the encoder output: only the joint input moves
    assert groups["layers.0"].mean_rel > 0 and groups["layers.0"].cosine_min < 1
    assert sum(len(g.matmuls) for g in report.groups) == len(_EncoderWeights(tiny_model_dir / "encoder.onnx").matmuls)
    assert group_name("/layers.12/att/q/MatMul", "layer") == "layers.12"
    assert group_name("/layers.12/att/q/MatMul", "matmul") == "layers.12/att/q"
    path = tmp_path / "table.json"
    report.save(path)
    assert SensitivityReport.load(path) == report


def test_int4_mixed_keeps_the_measured_layers_and_loses_less(report, tiny_model_dir, tmp_path, utterances):
    mixed = shutil.copytree(tiny_model_dir, tmp_path / "mixed")
    record = quantize_model_dir(mixed, "int4-mixed", sensitivity=report, mixed_budget=0.5, mixed_kept="int8-nbits")
    kept = choose_kept(report, 0.5)
    assert kept and sum(g.params for g in kept) <= 0.5 * sum(g.params for g in report.groups)
    assert kept[0].rank == 1
    int8 = sorted(m for g in kept for m in g.matmuls)
    assert record["kept_nodes"] == int8 and record["mixed"]["kept_precision"] == "int8-nbits"
    assert [g["group"] for g in record["mixed"]["kept_groups"]] == [g.group for g in kept]
    assert ModelConfig.load(mixed).quantization == record
    bits = _nbits_bits(mixed)
    assert sorted(n for n, (b, _) in bits.items() if b == 8) == sorted(m + "_Q8" for m in int8)
    assert all(level == 1 for b, level in bits.values() if b == 8)  # weight-only: fp32 arithmetic
    assert all(level == 4 for b, level in bits.values() if b == 4)
    assert len(bits) == len(constant_weight_matmuls(__import__("onnx").load(str(tiny_model_dir / "encoder.onnx"))))

    # the measured choice beats plain int4 and the opposite choice at the same budget
    plain = shutil.copytree(tiny_model_dir, tmp_path / "plain")
    quantize_model_dir(plain, "int4-kquant")
    reverse = SensitivityReport(**{**report.__dict__, "groups": [
        type(g)(**{**g.__dict__, "rank": len(report.groups) + 1 - g.rank}) for g in report.groups]})
    opposite = shutil.copytree(tiny_model_dir, tmp_path / "opposite")
    opposite_record = quantize_model_dir(opposite, "int4-mixed", sensitivity=reverse, mixed_budget=0.5,
                                         mixed_kept="int8-nbits")
    assert opposite_record["kept_nodes"] != int8
    reference = _joint_inputs(Model.load_dir(tiny_model_dir, threads=1), utterances)
    err = {name: encoder_error(reference, _joint_inputs(Model.load_dir(d, threads=1), utterances)).mean_rel
           for name, d in (("mixed", mixed), ("plain", plain), ("opposite", opposite))}
    assert err["mixed"] < err["plain"] and err["mixed"] < err["opposite"], err


def _nbits_bits(model_dir: Path) -> dict[str, tuple[int, int]]:
    """MatMulNBits node name -> (bits, accuracy_level)."""
    import onnx

    out = {}
    for n in onnx.load(str(model_dir / "encoder.onnx")).graph.node:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in n.attribute}
            out[n.name] = (attrs.get("bits", 4), attrs.get("accuracy_level", 0))
    return out


@pytest.mark.parametrize("kept,op", [("int8", "MatMulInteger"), ("fp32", "MatMul")])
def test_int4_mixed_other_kept_precisions(report, tiny_model_dir, tmp_path, kept, op):
    d = shutil.copytree(tiny_model_dir, tmp_path / "m")
    record = quantize_model_dir(d, "int4-mixed", sensitivity=report, mixed_budget=0.5, mixed_kept=kept)
    assert record["mixed"]["kept_precision"] == kept
    import onnx

    graph = onnx.load(str(d / "encoder.onnx"))
    names = {n.name for n in graph.graph.node if n.op_type == op}
    if kept == "fp32":
        assert set(record["kept_nodes"]) <= names and record["left_fp32"] == record["kept_nodes"]
    else:
        assert len(names) == len(record["kept_nodes"])
    assert all(b == 4 for b, _ in _nbits_bits(d).values())
    with pytest.raises(ModelError, match="keeps layers at"):
        quantize_model_dir(shutil.copytree(tiny_model_dir, tmp_path / "bad"), "int4-mixed", sensitivity=report,
                           mixed_kept="int2")


def test_int4_mixed_rejects_a_table_of_other_settings_or_models(report, tiny_model_dir, tmp_path):
    d = shutil.copytree(tiny_model_dir, tmp_path / "m")
    with pytest.raises(ModelError, match="block 128"):
        quantize_model_dir(d, "int4-mixed", block_size=128, sensitivity=report)
    alien = SensitivityReport(**{**report.__dict__, "groups": [
        type(g)(**{**g.__dict__, "matmuls": ["/layers.99/att/q/MatMul"]}) for g in report.groups]})
    with pytest.raises(ModelError, match="another model"):
        quantize_model_dir(d, "int4-mixed", sensitivity=alien)
    with pytest.raises(ModelError, match="budget"):
        quantize_model_dir(d, "int4-mixed", sensitivity=report, mixed_budget=1.5)
    with pytest.raises(ModelError, match="cannot read"):
        quantize_model_dir(d, "int4-mixed", sensitivity=tmp_path / "missing.json")
    assert ModelConfig.load(d).quantization == {"method": "fp32"}
    quantize_model_dir(d, "int4-kquant")
    with pytest.raises(ModelError, match="already quantized"):
        analyze(d, {"x": np.zeros(16000, np.float32)})


def test_analyze_command_and_convert_int4_mixed(tiny_model, tmp_path, speech_manifest, capsys):
    from streamasr.cli import main

    nemo_path, model_dir, _ = tiny_model
    audio = [str(it["path"]) for it in speech_manifest[:2]]
    table = tmp_path / "table.json"
    assert main(["analyze-sensitivity", str(model_dir), "--audio", *audio, "--granularity", "matmul",
                 "--budget", "0.2", "-o", str(table), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    saved = SensitivityReport.load(table)
    assert saved.granularity == "matmul" and len(saved.groups) == len(constant_weight_matmuls(
        __import__("onnx").load(str(model_dir / "encoder.onnx"))))
    assert "| 1 |" in out and "int8" in out and "layers.0/att/q" in out
    assert main(["analyze-sensitivity", str(tmp_path / "nowhere")]) == 2

    # conversion with the table, and with none (measured on the shared speech during conversion)
    out_dir = tmp_path / "mixed"
    assert main(["convert", str(nemo_path), "-o", str(out_dir), "--quant", "int4-mixed", "--sensitivity",
                 str(table), "--mixed-budget", "0.2"]) == 0
    q = ModelConfig.load(out_dir).quantization
    assert q["method"] == "int4-mixed" and q["mixed"]["sensitivity_source"] == str(table)
    assert q["mixed"]["granularity"] == "matmul" and 0 < q["mixed"]["kept_params"] <= 0.2 * q["mixed"]["total_params"]
    measured = tmp_path / "measured"
    assert main(["convert", str(nemo_path), "-o", str(measured), "--quant", "int4-mixed"]) == 0
    q = ModelConfig.load(measured).quantization
    assert q["mixed"]["sensitivity_source"].startswith("measured during conversion")
    assert json.loads((measured / "config.json").read_text())["quantization"]["kept_nodes"]
    assert Path(measured / "encoder.onnx").is_file()
