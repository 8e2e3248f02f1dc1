"""Offline operator fusion (convert/optimize.py) and `streamasr bench fusion`, on the tiny random model."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from streamasr.errors import ModelError
from streamasr.eval.verify import max_chunk_difference, run_with_encodings
from streamasr.model_config import ModelConfig
from streamasr.quant.optimize import (
    FUSIONS,
    op_counts,
    optimize_model_dir,
)
from streamasr.runtime import Model


def test_skip_layer_norm_fusion_finds_the_exported_graph_already_fused(tiny_model_dir, loaded_tiny, tmp_path, speech):
    """The converter writes each residual Add + LayerNormalization pair as one SkipLayerNormalization
    (convert/graph_rewrite.py), which ONNX Runtime's session optimizer does not do: the offline optimizer's
    pass finds nothing left, and the directory still runs the same."""
    d = shutil.copytree(tiny_model_dir, tmp_path / "m")
    before = op_counts(onnx.load(str(d / "encoder.onnx")))
    n_layers = loaded_tiny.config.encoder.n_layers
    # each conformer layer has four residual Add + LayerNormalization pairs (ff1, att, conv, ff2)
    assert before.get("SkipLayerNormalization", 0) == 4 * n_layers
    record = optimize_model_dir(d, {"skip_layer_norm"})
    after = op_counts(onnx.load(str(d / "encoder.onnx")))
    assert after["SkipLayerNormalization"] == before["SkipLayerNormalization"]
    assert after["LayerNormalization"] == before["LayerNormalization"]  # the conv module's norm, no Add before it
    assert ModelConfig.load(d).optimization == record and record["fusions"] == ["skip_layer_norm"]
    fused = Model.load_dir(d, threads=1)
    for name in sorted(speech)[:2]:
        ref, ref_enc = run_with_encodings(loaded_tiny, speech[name], 160, nemo_compat=False)
        res, enc = run_with_encodings(fused, speech[name], 160, nemo_compat=False)
        assert res.token_ids == ref.token_ids
        assert 0 <= max_chunk_difference(ref_enc, enc) < 1e-4
    with pytest.raises(ModelError, match="already optimized"):
        optimize_model_dir(d, {"skip_layer_norm"})


def test_unknown_fusion_and_quantized_graph_are_refused(tiny_model_dir, tmp_path):
    from streamasr.quant.quantize import quantize_model_dir

    q = shutil.copytree(tiny_model_dir, tmp_path / "q")
    quantize_model_dir(q, "int8")
    with pytest.raises(ModelError, match="fuse the fp32 graph, then quantize"):
        optimize_model_dir(q, {"skip_layer_norm"})
    d = shutil.copytree(tiny_model_dir, tmp_path / "m")
    with pytest.raises(ModelError, match="unknown fusion") as exc:
        optimize_model_dir(d, {"warp_drive"})
    assert "skip_layer_norm" in str(exc.value) and set(FUSIONS) >= {"attention", "skip_layer_norm"}
    assert ModelConfig.load(d).optimization == {}


def test_bench_fusion_reports_changes_fidelity_and_speed(tiny_model_dir, tmp_path, capsys):
    from streamasr.cli import main

    out_json = tmp_path / "fusion.json"
    assert main(["bench", "fusion", "--model", str(tiny_model_dir), "--latency", "160", "--seconds", "3",
                 "--threads", "1", "--utterances", "1", "--quant", "int8", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    # the converter wrote every residual norm as SkipLayerNormalization already: the optimizer adds none
    assert "| all fusions |" in out and "SkipLayerNormalization 0->" not in out
    assert "ONNX Runtime's own session-time optimizer" in out and "RTFx vs first" in out
    import json

    report = json.loads(out_json.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"all fusions"} and rows["all fusions"]["faithful"] and rows["all fusions"]["tokens_identical"]
    assert {r["model"] for r in report["speed"]} == {"unfused", "all fusions"}
    assert {r["quantization"] for r in report["speed"]} == {"int8"}  # fused first, then quantized
    assert all(np.isfinite(r["rtfx"]) and r["rtfx"] > 0 for r in report["speed"])
    assert ModelConfig.load(tiny_model_dir).optimization == {}  # the model itself is untouched


def test_convert_fuse_option(tiny_model, tmp_path):
    from streamasr.cli import main

    nemo_path = tiny_model[0]
    out = tmp_path / "fused"
    assert main(["convert", str(nemo_path), "-o", str(out), "--quant", "int8", "--fuse", "skip_layer_norm"]) == 0
    cfg = ModelConfig.load(out)
    assert cfg.optimization["fusions"] == ["skip_layer_norm"] and cfg.quantization["method"] == "int8"
    assert op_counts(onnx.load(str(out / "encoder.onnx"))).get("SkipLayerNormalization", 0) > 0
    assert main(["convert", str(nemo_path), "-o", str(tmp_path / "bad"), "--fuse", "warp_drive"]) == 2
